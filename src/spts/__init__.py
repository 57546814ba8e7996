"""spts: self-predictive token skipping for fast long-context inference with transformers.

import spts
spts.enable(model, spts.SPTSConfig.for_model(model))
out = model.generate(input_ids, max_new_tokens=32)   # skipping prefill, compressed KV cache
print(spts.last_stats(model).to_dict())
spts.disable(model)                                  # exactly the original model again
"""

from spts.adapters import supported_model_types
from spts.config import PRESETS, SPTSConfig
from spts.errors import SPTSError, TransformersCompatibilityError, UnsupportedInputError, UnsupportedModelError
from spts.policies import AttentionScoreFFN, FFNScorer
from spts.runtime import (
    LayerStats,
    PrefillStats,
    StaticDecoder,
    cache_nbytes,
    cache_tokens_per_layer,
    disable,
    enable,
    enabled,
    ffn_scorer,
    is_enabled,
    last_stats,
)
from spts.tuning import tune

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AttentionScoreFFN",
    "FFNScorer",
    "LayerStats",
    "PrefillStats",
    "SPTSConfig",
    "SPTSError",
    "StaticDecoder",
    "TransformersCompatibilityError",
    "UnsupportedInputError",
    "UnsupportedModelError",
    "__version__",
    "cache_nbytes",
    "cache_tokens_per_layer",
    "disable",
    "enable",
    "enabled",
    "ffn_scorer",
    "is_enabled",
    "last_stats",
    "supported_model_types",
    "tune",
]
