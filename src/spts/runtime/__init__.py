"""The runtime that executes a skipping prefill and decodes from the compressed cache."""

from spts.runtime.cache import cache_nbytes, cache_tokens_per_layer
from spts.runtime.decode import StaticDecoder
from spts.runtime.engine import SPTSRuntime, disable, enable, enabled, ffn_scorer, is_enabled, last_stats
from spts.runtime.stats import LayerStats, PrefillStats

__all__ = [
    "LayerStats",
    "PrefillStats",
    "SPTSRuntime",
    "StaticDecoder",
    "cache_nbytes",
    "cache_tokens_per_layer",
    "disable",
    "enable",
    "enabled",
    "ffn_scorer",
    "is_enabled",
    "last_stats",
]
