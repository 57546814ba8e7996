"""Qwen2 / Qwen2.5: the LLaMA layout with q/k/v biases, which live inside the projections."""

from spts.adapters.base import DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    model_types = ("qwen2",)
