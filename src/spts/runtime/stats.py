"""What the last SPTS prefill did, per layer: for benchmarks, debugging and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from spts.runtime.timing import IntervalTimer


@dataclass(frozen=True)
class LayerStats:
    """Token counts of one layer in one prefill (per batch row; every row of an unpadded batch has the same counts,
    and in a padded batch these are the largest row's, the slots each tensor holds: see ``PrefillStats.rows``).

    ``stage`` is None for full layers before ``start_layer``.
    """

    layer_idx: int
    stage: int | None
    candidates: int
    attention_active: int
    ffn_active: int
    kv_tokens: int


@dataclass(frozen=True)
class SparseLayerStats:
    """Block-sparse attention in one layer of one prefill: the share of causal key blocks it computed (1.0 when
    its estimate kept more than ``sparse_max_density`` and the layer ran dense attention)."""

    layer_idx: int
    kept_density: float
    dense_fallback: bool

    @property
    def density(self) -> float:
        return 1.0 if self.dense_fallback else self.kept_density


@dataclass
class PrefillStats:
    """Statistics of one SPTS prefill; read them with :func:`spts.last_stats`.

    ``kv_positions`` maps each skipping layer to the (B, kv_tokens) original positions of the tokens
    whose keys/values that layer cached; full layers cache every position.

    A left-padded batch has one ``PrefillStats`` per row in ``rows``, each what that prompt's prefill alone
    reports (its own length, counts and positions, counted from its first real token); the batch's own
    ``prompt_length`` and layer counts are then the padded tensors' sizes, and ``kv_positions`` is empty.
    """

    prompt_length: int
    batch_size: int
    layers: list[LayerStats] = field(default_factory=list)
    kv_positions: dict[int, torch.Tensor] = field(default_factory=dict)
    candidates: dict[int, torch.Tensor] = field(default_factory=dict)
    probe_timer: IntervalTimer | None = field(default=None, repr=False)
    total_timer: IntervalTimer | None = field(default=None, repr=False)
    rows: list[PrefillStats] = field(default_factory=list)
    sparse: dict[int, SparseLayerStats] = field(default_factory=dict)
    """Layers with block-sparse attention (``SPTSConfig.sparse_*``) that estimated, by layer."""
    estimate_timer: IntervalTimer | None = field(default=None, repr=False)

    @property
    def prompt_lengths(self) -> list[int]:
        """Each row's real prompt length (all ``prompt_length`` in an unpadded batch)."""
        return [row.prompt_length for row in self.rows] if self.rows else [self.prompt_length] * self.batch_size

    @property
    def candidates_per_stage(self) -> dict[int, int]:
        """Candidates in play in each stage (after the pruning that opens it)."""
        out: dict[int, int] = {}
        for layer in self.layers:
            if layer.stage is not None:
                out.setdefault(layer.stage, layer.candidates)
        return out

    @property
    def kv_tokens(self) -> list[int]:
        return [layer.kv_tokens for layer in self.layers]

    @property
    def kv_fraction(self) -> float:
        """Cached tokens over what a full prefill caches (1.0 = no compression); over real tokens in a padded batch."""
        if self.rows:
            kept = sum(sum(row.kv_tokens) for row in self.rows)
            return kept / sum(row.prompt_length * len(row.layers) for row in self.rows)
        return sum(self.kv_tokens) / (self.prompt_length * len(self.layers)) if self.layers else 1.0

    @property
    def probe_seconds(self) -> float:
        return self.probe_timer.seconds() if self.probe_timer else 0.0

    @property
    def prefill_seconds(self) -> float:
        return self.total_timer.seconds() if self.total_timer else 0.0

    @property
    def probe_time_share(self) -> float:
        total = self.prefill_seconds
        return self.probe_seconds / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        out = {
            "prompt_length": self.prompt_length,
            "batch_size": self.batch_size,
            "candidates_per_stage": self.candidates_per_stage,
            "kv_tokens_per_layer": self.kv_tokens,
            "kv_fraction": self.kv_fraction,
            "attention_active_per_layer": [layer.attention_active for layer in self.layers],
            "ffn_active_per_layer": [layer.ffn_active for layer in self.layers],
            "probe_seconds": self.probe_seconds,
            "prefill_seconds": self.prefill_seconds,
            "probe_time_share": self.probe_time_share,
            **self._sparse_dict(),
        }
        if self.rows:
            # The probe timer is the batch's; rows report their own counts.
            timed = ("probe_", "prefill_")
            out["rows"] = [{k: v for k, v in row.to_dict().items() if not k.startswith(timed)} for row in self.rows]
        return out

    def _sparse_dict(self) -> dict[str, Any]:
        if not self.sparse:
            return {}
        estimate = self.estimate_timer.seconds() if self.estimate_timer else 0.0
        return {
            "sparse_density_per_layer": {i: s.density for i, s in sorted(self.sparse.items())},
            "sparse_dense_fallback_layers": sorted(i for i, s in self.sparse.items() if s.dense_fallback),
            "sparse_estimate_seconds": estimate,
            "sparse_estimate_time_share": estimate / self.prefill_seconds if self.prefill_seconds > 0 else 0.0,
        }
