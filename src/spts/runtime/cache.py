"""Reading a (possibly compressed) transformers cache: how many tokens each layer holds, how many bytes."""

from __future__ import annotations

from typing import Any


def cache_tokens_per_layer(cache: Any) -> list[int]:
    """Cached tokens of each layer (they differ between layers after an SPTS prefill)."""
    return [cache.get_seq_length(i) for i in range(len(cache.layers))]


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the keys and values of every layer."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
