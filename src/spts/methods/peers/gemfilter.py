"""GemFilter (Shi et al. 2024, arXiv 2409.17422): an early layer picks the tokens, the whole model reads only them.

Pass 1 runs layers ``[0, filter_layer)`` over the whole prompt and stops at the filter layer's input: only that
layer's keys and the last token's query are computed. Tokens are scored by the last query's raw attention logits
summed over heads, average-pooled over 5 neighbours, and the top ``k`` (the last token always) are kept in their
original order. Pass 2 runs the unmodified model on those ``k`` token ids as a new prompt (positions 0..k-1), and
decoding continues from its cache at position ``k``. Reference code: SalesforceAIResearch/GemFilter,
``my_baseline/GemFilter/gem_filter_utils.py`` and ``my_utils/my_generation.py``; docs/peers.md lists where we differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spts.adapters import DecoderAdapter, adapter_for
from spts.config import Budget
from spts.errors import UnsupportedModelError
from spts.methods.peers.base import check_keep, check_layer, kept_tokens, num_layers_of, scaled_layer
from spts.policies import top_tokens
from spts.runtime.engine import is_enabled
from spts.runtime.transformers_api import incompatible, output_cache

# The paper's choices (reference code above): layer 13 of LLaMA-3.1-8B's 32 (needle_eval.py, "13, 14 out of 32"),
# top-k 1024 tokens (needle_eval.py --topk default, LlamaSelectAttention.topk), avg_pool1d kernel 5
# (standard_dis_index's kernel_size).
PAPER_LAYER, PAPER_LAYERS, PAPER_KEEP, PAPER_POOL = 13, 32, 1024, 5


class _FilterLayerReached(Exception):
    """Raised by the hook on the filter layer: pass 1 needs nothing computed from there on."""


@dataclass(frozen=True)
class GemFilter:
    """GemFilter's prefill: ``keep`` tokens (int) or a fraction of the prompt (float in (0, 1]) chosen at
    ``filter_layer``. Build it with :meth:`for_model`, which checks the layer against the model."""

    keep: Budget
    filter_layer: int
    pool_kernel: int = PAPER_POOL

    def __post_init__(self) -> None:
        check_keep("gemfilter keep", self.keep)
        if self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd and positive (centred on each token), got {self.pool_kernel}")

    @classmethod
    def for_model(cls, model: nn.Module, keep: Budget | None = None, filter_layer: int | None = None) -> GemFilter:
        """The paper's keep (1024 tokens) and filter layer (13 of 32, at the same relative depth) unless given."""
        num_layers = num_layers_of(model)
        layer = scaled_layer(PAPER_LAYER, PAPER_LAYERS, num_layers) if filter_layer is None else filter_layer
        check_layer("gemfilter filter layer", layer, 0, num_layers - 1, num_layers)
        window = adapter_for(model).sliding_window(layer)
        if window:
            raise UnsupportedModelError(
                f"gemfilter: filter layer {layer} uses sliding-window attention (window {window}), where the last "
                "query does not see the whole prompt; pick a full-attention layer with :L<layer>"
            )
        return cls(PAPER_KEEP if keep is None else keep, layer)

    def describe(self) -> dict[str, Any]:
        return {"kind": "gemfilter", **asdict(self)}

    def select(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Pass 1: the kept positions (B, k), ascending, of each row of ``ids`` (B, T)."""
        return self._select(model, self._adapter(model), ids)

    def _select(self, model: nn.Module, adapter: DecoderAdapter, ids: torch.Tensor) -> torch.Tensor:
        hidden, (cos, sin) = self._filter_layer_input(model, adapter, ids)
        layer = adapter.layers()[self.filter_layer]
        with torch.inference_mode():
            normed = adapter.input_norm(layer, hidden)
            keys = adapter.keys(layer, normed, cos, sin)  # (B, kv_heads, T, d)
            query = adapter.queries(layer, normed[:, -1:], cos[:, -1:], sin[:, -1:])  # (B, heads, 1, d)
            batch, heads, _, dim = query.shape
            # Each query head against its own KV group (GemFilter's repeat_kv), raw logits (no softmax, no
            # scaling: neither changes the ranking), summed over heads; float32 where the original ran in fp16.
            grouped = query.reshape(batch, keys.shape[1], heads // keys.shape[1], dim).float()
            scores = torch.matmul(grouped, keys.float().transpose(-1, -2)).sum(dim=(1, 2))  # (B, T)
            pooled = F.avg_pool1d(scores[:, None], self.pool_kernel, stride=1, padding=self.pool_kernel // 2)[:, 0]
            return top_tokens(pooled, kept_tokens(self.keep, ids.shape[-1]))

    def prefill(self, model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Both passes (TTFT counts both): last-position logits (B, vocab) and pass 2's cache of k tokens per layer."""
        adapter = self._adapter(model)
        with torch.inference_mode():
            prompt = ids
            if kept_tokens(self.keep, ids.shape[-1]) < ids.shape[-1]:  # keeping every token needs no filter pass
                prompt = ids.gather(1, self._select(model, adapter, ids))
            out = model(prompt, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], output_cache(out)

    def _adapter(self, model: nn.Module) -> DecoderAdapter:
        if is_enabled(model):
            raise ValueError("gemfilter runs the unmodified model: disable SPTS on it first (spts.disable(model))")
        adapter = adapter_for(model)
        check_layer("gemfilter filter layer", self.filter_layer, 0, len(adapter.layers()) - 1, len(adapter.layers()))
        return adapter

    def _filter_layer_input(self, model: nn.Module, adapter: DecoderAdapter, ids: torch.Tensor):
        """The filter layer's input hidden states (B, T, D) and rotary (cos, sin), from the unmodified model's own
        forward, stopped before that layer runs (so no later layer, norm or LM head is computed)."""
        seen: dict[str, Any] = {}

        def stop(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["hidden"] = args[0] if args else kwargs.get("hidden_states")
            seen["rotary"] = kwargs.get("position_embeddings")
            raise _FilterLayerReached

        # prepend: no other pre-hook (a benchmark's layer timer) starts for a layer that will not run.
        layer = adapter.layers()[self.filter_layer]
        handle = layer.register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
        try:
            with torch.inference_mode():
                model(ids, use_cache=False)
        except _FilterLayerReached:
            pass
        finally:
            handle.remove()
        if seen.get("hidden") is None or seen.get("rotary") is None:
            raise incompatible(f"gemfilter: decoder layer {self.filter_layer} got no hidden states or rotary cos/sin")
        return seen["hidden"], seen["rotary"]
