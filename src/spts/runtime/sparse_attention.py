"""Block-sparse prefill attention in the layers an SPTS config names (``SPTSConfig.sparse_*``, docs/sparse.md).

Layers below ``start_layer`` run the stock transformers layer, whose attention module looks its attention
function up in transformers' global registry by ``self.config._attn_implementation``. For the length of one SPTS
prefill, each sparse layer's attention module gets its own view of the model config that names
:data:`SPARSE_ATTENTION`, a function registered once under that name which dispatches on the module's own state:
only modules of an enabled model that are inside a prefill carry it. Every other model, instance and call
(decoding, a cache prefix, training) gets the model's own attention function, with the module's own config back
in place (FlashAttention reads it). Skipping layers call the runtime's attention function directly, which
:meth:`SparseAttention.wrap` routes the same way.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from spts.adapters import DecoderAdapter
from spts.config import SPTSConfig
from spts.errors import UnsupportedModelError
from spts.policies.sparse import (
    antidiagonal_block_mass,
    density,
    kept_counts,
    rank_blocks,
    round_up_counts,
    with_dense_tail,
)
from spts.runtime.sparse_kernels import KERNELS, block_sparse_attention, default_kernel
from spts.runtime.stats import PrefillStats, SparseLayerStats
from spts.runtime.timing import IntervalTimer

SPARSE_ATTENTION = "spts_block_sparse"
_STATE = "_spts_sparse_attention"

MIN_BLOCKS = 24
"""Prompts of fewer query blocks (3K tokens at block 128) run dense attention without estimating: at such lengths
attention is a small share of a layer, and the estimate mostly keeps enough blocks to fall back anyway."""


def _dispatch(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    sparse = module.__dict__.get(_STATE)
    if sparse is None:
        raise UnsupportedModelError(
            f"the attention implementation {SPARSE_ATTENTION!r} is set by spts.enable on the sparse layers of one "
            "model for the length of a prefill; load models with 'sdpa', 'eager' or 'flash_attention_2'"
        )
    return sparse(module, *args, **kwargs)


AttentionInterface.register(SPARSE_ATTENTION, _dispatch)


def _own_function(module: nn.Module, implementation: str) -> Callable:
    """The attention function the stock module would call: the registry's, or its family's eager one."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", eager_attention_forward)
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


class SparseAttention:
    """Block-sparse prefill attention for the sparse layers of one enabled model."""

    def __init__(self, model: nn.Module, adapter: DecoderAdapter, config: SPTSConfig) -> None:
        layers = adapter.layers()
        self.config = config
        self.layers = config.sparse_layers(len(layers))
        windowed = [i for i in self.layers if adapter.sliding_window(i)]
        if windowed:
            raise UnsupportedModelError(
                f"layers {windowed} use sliding-window attention, which block-sparse attention does not cover; "
                "use a checkpoint without a sliding window or move sparse_from/sparse_to past them"
            )
        self.model_config = model.config
        self.modules = {i: adapter.attention(layers[i]) for i in self.layers}
        self.kernel = os.environ.get("SPTS_SPARSE_KERNEL") or None
        if self.kernel is not None and self.kernel not in KERNELS:
            raise ValueError(f"SPTS_SPARSE_KERNEL={self.kernel!r}; known kernels: {', '.join(KERNELS)}")
        self.stats: PrefillStats | None = None
        self._own: dict[int, Callable] = {}
        self._configs: dict[int, Any] = {}

    # ---------------------------------------------------------------- one prefill
    def begin(self, stats: PrefillStats) -> None:
        """From now until :meth:`end`, the sparse layers' attention modules dispatch here."""
        self.end()  # never stack a view on a view, whatever ended the last prefill
        implementation = self.model_config._attn_implementation
        view = copy.copy(self.model_config)
        view._attn_implementation_internal = SPARSE_ATTENTION
        for module in self.modules.values():
            self._own[id(module)] = _own_function(module, implementation)
            self._configs[id(module)] = module.__dict__["config"]
            module.__dict__["config"] = view
            module.__dict__[_STATE] = self
        self.stats = stats

    def end(self) -> None:
        """Put every module back as it was (idempotent)."""
        for module in self.modules.values():
            if id(module) in self._configs:
                module.__dict__["config"] = self._configs.pop(id(module))
            module.__dict__.pop(_STATE, None)
        self.stats = None

    def wrap(self, attention_function: Callable) -> Callable:
        """``attention_function`` for skipping layers: sparse in the sparse layers during a prefill."""

        def attend(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
            if module.__dict__.get(_STATE) is self:
                return self(module, *args, own=attention_function, **kwargs)
            return attention_function(module, *args, **kwargs)

        return attend

    # ---------------------------------------------------------------- one layer
    def _dense(self, own: Callable | None, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if own is not None:
            return own(module, *args, **kwargs)
        # The stock module's own function, with its own config in place while it runs (FlashAttention reads it).
        view = module.__dict__["config"]
        module.__dict__["config"] = self._configs[id(module)]
        try:
            return self._own[id(module)](module, *args, **kwargs)
        finally:
            module.__dict__["config"] = view

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *args: Any,
        own: Callable | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        config = self.config
        block, length = config.sparse_block, query.shape[2]
        # Sparse only over a whole prompt attending causally to itself (the SPTS prefill has checked that no row
        # is padded); anything else, or too short a prompt, is the model's own attention.
        plain = (
            self.stats is not None
            and key.shape[2] == length
            and kwargs.get("sliding_window") is None
            and not module.training
            and -(-length // block) >= MIN_BLOCKS
        )
        if not plain:
            return self._dense(own, module, query, key, value, attention_mask, *args, **kwargs)
        stats = self.stats
        assert stats is not None
        if stats.estimate_timer is None:
            stats.estimate_timer = IntervalTimer(query.device)
        scaling = kwargs.get("scaling") or module.scaling
        stats.estimate_timer.start()
        mass = antidiagonal_block_mass(query, key, block, scaling, per_head=config.sparse_per_head)
        order = rank_blocks(mass)
        counts = kept_counts(mass, order, config.sparse_threshold, config.sparse_min_density)
        counts = round_up_counts(with_dense_tail(counts, length, block, config.sparse_query_tokens))
        kept = density(counts)
        stats.estimate_timer.stop()
        layer_idx = int(getattr(module, "layer_idx", -1))
        dense = kept > config.sparse_max_density
        stats.sparse[layer_idx] = SparseLayerStats(layer_idx, kept, dense)
        if dense:
            return self._dense(own, module, query, key, value, attention_mask, *args, **kwargs)
        kernel = self.kernel or default_kernel(query.device)
        return block_sparse_attention(kernel, query, key, value, order, counts, block, scaling), None


def sparse_attention_for(model: nn.Module, adapter: DecoderAdapter, config: SPTSConfig) -> SparseAttention | None:
    """The sparse attention of ``config`` on ``model``, or None when the config has no sparse layer."""
    if not config.sparse_layers(len(adapter.layers())):
        return None
    return SparseAttention(model, adapter, config)
