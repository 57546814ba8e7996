"""LLaMA 2/3.x (and SmolLM2, which is a LLaMA): the reference layout, nothing to override."""

from spts.adapters.base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    model_types = ("llama",)
