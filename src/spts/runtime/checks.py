"""Checks around an SPTS prefill: what a model and a call must be for SPTS to compute faithfully, and the
invariant every prefill must leave behind (each layer cached exactly the tokens it kept)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from spts.adapters import DecoderAdapter
from spts.config import SPTSConfig
from spts.errors import UnsupportedInputError, UnsupportedModelError
from spts.runtime.stats import PrefillStats
from spts.runtime.transformers_api import incompatible

SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def check_cache_matches_plan(stats: PrefillStats, cache: Any, num_layers: int) -> None:
    """Raise unless every layer ran as planned and cached exactly the tokens it kept.

    Lengths only, so it is cheap enough to run after every prefill: a transformers release that
    stops handing a layer its cache (or its rotary tables) would otherwise make SPTS return
    logits and a cache that look fine and are wrong."""
    ran = [layer.layer_idx for layer in stats.layers]
    if ran != list(range(num_layers)):
        missing = sorted(set(range(num_layers)) - set(ran))
        raise incompatible(f"the SPTS prefill did not run its skipping pass in layers {missing}")
    if cache is None:
        return
    held = [cache.get_seq_length(i) for i in range(num_layers)]
    planned = stats.kv_tokens
    if held != planned:
        wrong = [i for i in range(num_layers) if held[i] != planned[i]]
        raise incompatible(
            f"after the SPTS prefill, the cache of layers {wrong} holds {[held[i] for i in wrong]} tokens where the "
            f"plan kept {[planned[i] for i in wrong]}: a layer did not write its keys and values to the cache"
        )


def check_prefill_inputs(attention_mask: Any, cache: Any) -> None:
    if cache is not None and (
        not isinstance(cache, DynamicCache) or not all(type(layer) is DynamicLayer for layer in cache.layers)
    ):
        layer_types = sorted({type(layer).__name__ for layer in getattr(cache, "layers", [])})
        raise UnsupportedInputError(
            f"SPTS stores a different number of tokens per layer and needs a DynamicCache of DynamicLayer layers; "
            f"got {type(cache).__name__} with {', '.join(layer_types) or 'no'} layers. Do not pass "
            "cache_implementation='static' (or offloaded/quantized caches) to generate while SPTS is enabled."
        )
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() != 2:
        raise UnsupportedInputError(
            f"SPTS prefill takes a 2D attention_mask (batch, tokens); got shape {tuple(attention_mask.shape)}. "
            "Pass the tokenizer's 2D mask (ones, or left padding), or none: SPTS builds its own causal masks"
        )


def check_attention_backend(model: nn.Module) -> None:
    implementation = model.config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {implementation!r} is not supported by SPTS; load the model with "
            f"attn_implementation set to one of {', '.join(SUPPORTED_ATTENTION)}"
        )


def check_model(adapter: DecoderAdapter, config: SPTSConfig, model: nn.Module) -> None:
    num_layers = len(adapter.layers())
    config.validate_for(num_layers)
    check_attention_backend(model)
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1 or (getattr(model, "tp_size", None) or 1) > 1:
        raise UnsupportedModelError(
            "SPTS runs on a model held by one device; this one is split across devices "
            f"({', '.join(sorted(devices)) or 'tensor parallel'}). Load it with device_map on a single device."
        )
    generation_config = getattr(model, "generation_config", None)
    if getattr(generation_config, "prefill_chunk_size", None):
        raise UnsupportedModelError(
            "chunked prefill (generation_config.prefill_chunk_size) is not supported: the probe needs the whole "
            "prompt's last token; set prefill_chunk_size=None"
        )
    masked = {
        "kv_complete": (config.kv_complete, "active queries over all candidates", False),
        "local_window": (config.local_window, "each skipped candidate over its window", 0),
        "full_view_tokens": (config.full_view_tokens > 1, "the last tokens causally over the whole prompt", 1),
    }
    for option, (value, why, off) in masked.items():
        if value and model.config._attn_implementation.startswith("flash"):
            raise UnsupportedModelError(
                f"{option} needs an attention mask ({why}), which FlashAttention does not take; load the model "
                f"with attn_implementation='sdpa' or 'eager', or set {option}={off}"
            )
    windowed = [i for i in config.skipping_layers(num_layers) if adapter.sliding_window(i)]
    if windowed:
        raise UnsupportedModelError(
            f"layers {windowed[0]}..{windowed[-1]} use sliding-window attention "
            f"(sliding_window={adapter.sliding_window(windowed[0])}), which SPTS does not support in skipping "
            "layers; use a checkpoint or config without a sliding window (e.g. Mistral v0.2+, Qwen with "
            "use_sliding_window=False)"
        )
