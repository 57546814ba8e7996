"""Model adapters: one small class per decoder family, looked up by ``config.model_type``."""

from __future__ import annotations

from torch import nn

from spts.adapters.base import DecoderAdapter
from spts.adapters.llama import LlamaAdapter
from spts.adapters.mistral import MistralAdapter
from spts.adapters.qwen2 import Qwen2Adapter
from spts.adapters.qwen3 import Qwen3Adapter
from spts.errors import UnsupportedModelError

ADAPTERS: dict[str, type[DecoderAdapter]] = {
    model_type: adapter
    for adapter in (LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter)
    for model_type in adapter.model_types
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model: nn.Module) -> DecoderAdapter:
    """The adapter for ``model``'s family, or a clear error listing the supported families."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"SPTS does not support model_type={model_type!r} ({type(model).__name__}); supported model "
            f"types: {', '.join(supported_model_types())}. A family with the LLaMA layer layout needs only a "
            "small adapter class in spts/adapters/."
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "DecoderAdapter", "adapter_for", "supported_model_types"]
