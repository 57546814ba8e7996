"""Mistral: the LLaMA layout; its optional sliding window is refused by the runtime checks."""

from spts.adapters.base import DecoderAdapter


class MistralAdapter(DecoderAdapter):
    model_types = ("mistral",)
