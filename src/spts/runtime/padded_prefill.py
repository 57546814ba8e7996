"""The SPTS prefill of a left-padded batch: every row skips exactly as it would alone.

Layers before ``start_layer`` (and from ``end_layer`` on) run batched, as transformers runs them, with its padding
mask. In each skipping layer every row runs :func:`spts.runtime.prefill.skipping_prefill` on its own real tokens
(the last ``L_b`` columns), with the plan of its own length: its budgets are fractions of its own length,
padding is never a candidate, and its selection is the one it makes alone (same code, same shapes, same
tie-breaking), so the batch changes nothing but the inputs' rounding. Per-row work keeps the batch rectangular
only where it is cheap to: each layer's cache stores the rows' kept keys and values left-padded to the longest
row's count, and :class:`spts.runtime.padding.PaddedLayout` records which slots are real for decoding.

The price is one launch of each skipping-layer kernel per row instead of per batch; the work is the rows' own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spts.errors import UnsupportedInputError
from spts.policies import plan_layers
from spts.runtime.padding import PaddedLayout, attach_layout, left_pad, next_positions
from spts.runtime.prefill import PrefillContext, PrefillState, skipping_prefill
from spts.runtime.stats import LayerStats, PrefillStats


class _RowCache:
    """Stands in for the cache in one row's skipping pass: keeps what the layer would cache, hands it back as an
    empty cache layer does (the prefill is the layer's first write)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys, self.values = keys, values
        return keys, values


@dataclass
class PaddedPrefill:
    """One padded prefill's state: a :class:`PrefillState` per row and the batch's cache layout so far."""

    rows: list[PrefillState]
    lengths: tuple[int, ...]
    stats: PrefillStats
    attention_mask: torch.Tensor
    next_positions: torch.Tensor
    slot_masks: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        context: PrefillContext,
        stats: PrefillStats,
        num_layers: int,
        attention_mask: torch.Tensor,
        lengths: tuple[int, ...],
        position_ids: Any,
    ) -> PaddedPrefill:
        if context.attn_implementation.startswith("flash"):
            raise UnsupportedInputError(
                f"padded batches with SPTS run on sdpa or eager attention, not {context.attn_implementation!r} "
                "(its padding-free varlen path is untested with per-layer caches); load the model with "
                "attn_implementation='sdpa', or prefill prompts one at a time"
            )
        config = context.config
        rows = []
        for length in lengths:
            row_stats = PrefillStats(prompt_length=length, batch_size=1, probe_timer=stats.probe_timer)
            row_stats.layers.extend(
                LayerStats(i, None, length, length, length, length) for i in range(config.start_layer)
            )
            plans = plan_layers(config, num_layers, length)
            rows.append(PrefillState(context=context, plans=plans, candidates=None, scores=None, stats=row_stats))
        stats.rows = [row.stats for row in rows]
        mask = attention_mask.bool()
        width = mask.shape[1]
        return cls(rows, lengths, stats, mask, next_positions(position_ids, len(lengths), width, mask.device))

    def layer(
        self,
        layer_idx: int,
        layer: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
    ) -> torch.Tensor:
        """Run skipping layer ``layer_idx`` on each row's real tokens; return the full (B, T, D) residual."""
        batch, width, _ = hidden_states.shape
        cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
        out = hidden_states.clone()  # padding keeps its state; no real token ever reads it
        sinks = []
        for b, (row, length) in enumerate(zip(self.rows, self.lengths, strict=True)):
            real = slice(width - length, width)
            sink = _RowCache() if cache is not None else None
            out[b, real] = skipping_prefill(
                row,
                layer_idx,
                layer,
                hidden_states[b : b + 1, real],
                (cos[b : b + 1, real], sin[b : b + 1, real]),
                sink,
            )[0]
            sinks.append(sink)
        if cache is not None:
            keys, filled = left_pad([s.keys for s in sinks])
            values, _ = left_pad([s.values for s in sinks])
            cache.update(keys, values, layer_idx)
            self.slot_masks[layer_idx] = filled
        done = [row.stats.layers[-1] for row in self.rows]
        self.stats.layers.append(
            LayerStats(
                layer_idx,
                done[0].stage,
                max(s.candidates for s in done),
                max(s.attention_active for s in done),
                max(s.ffn_active for s in done),
                kv_tokens=max(s.kv_tokens for s in done),
            )
        )
        return out

    def finish(self, cache: Any, num_layers: int) -> None:
        """Complete each row's statistics and give the cache its layout (after the last layer ran)."""
        for row, length in zip(self.rows, self.lengths, strict=True):
            stop = row.context.config.skipping_layers(num_layers).stop
            row.stats.layers.extend(
                LayerStats(i, None, length, length, length, length) for i in range(stop, num_layers)
            )
        if cache is not None:
            attach_layout(cache, PaddedLayout(self.attention_mask, self.lengths, self.slot_masks, self.next_positions))
