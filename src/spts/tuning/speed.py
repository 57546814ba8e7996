"""Speed model of ``spts tune``: the TTFT speedup of a config predicted from per-layer costs, calibrated on this
machine (:mod:`spts.tuning.timing`), so hundreds of configs are ranked for speed without timing each.

A layer's parts have small linear models in their token counts (seconds, non-negative coefficients):

* ``attention``: norm, q/k/v projections, attention and output projection with ``n`` active tokens
  (``a0 + a1 n + a2 n^2``). A skipping layer also computes keys for every candidate (its probe reuses them):
  those cost the keys' share of the per-token term (``key_share``, from the projections' weight sizes);
  KV-complete skipping attends over and caches every candidate (keys and values, ``n_active * n_candidates``);
* ``ffn``: post-attention norm and MLP over ``n`` tokens (``f0 + f1 n``);
* ``probe``: the last token's query against ``n`` candidate keys, softmax and pooling;
* ``move``: gathering ``n`` rows of the residual stream and scattering them back (an out-of-place copy);
* ``ffn_score``: the FFN policy's own scores over ``n`` candidates (LTP proxies; zero without);
* ``sparse_estimate``, ``sparse_kernel``, ``dense_core`` (timed only for configs with block-sparse attention):
  the estimate and block selection over ``n`` tokens, the block-sparse kernel per unit of density, and the dense
  attention call alone. A sparse layer whose measured density (:mod:`spts.tuning.sparse_speed`) is ``d`` pays
  ``sparse_estimate + d * sparse_kernel`` instead of ``dense_core``, or the estimate on top of it when ``d``
  exceeds its ``sparse_max_density`` (the dense fallback).

A full layer over ``T`` tokens costs ``attention(T) + ffn(T)``; a skipping layer pays each part at the counts of
:func:`spts.policies.plan_layers`, as :mod:`spts.runtime.prefill` computes them. What a prefill spends outside
the layers (embedding, masks, rotary tables, final norm, LM head) is charged to every method alike. Predicted
speedup = predicted full prefill / predicted config prefill.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from spts.config import SPTSConfig
from spts.policies import plan_layers

FILE = "speed_model.json"


@dataclass(frozen=True)
class SpeedModel:
    """Per-layer costs (seconds) as polynomials in token counts, plus what a prefill spends outside the layers."""

    num_layers: int
    coefficients: Mapping[str, tuple[float, ...]]
    """Part -> coefficients of ``1, n, n^2, ...`` (parts: see the module docstring)."""
    key_share: float = 0.125
    """Share of the attention's per-token cost that computing keys takes (k_proj over all four projections)."""
    value_share: float = 0.125
    overhead_per_token: float = 0.0
    """Seconds per prompt token a prefill spends outside the decoder layers."""
    key: Mapping[str, Any] = field(default_factory=dict)
    """What the model was measured for; a cached model is reused only for the same key."""
    samples: Mapping[str, Any] = field(default_factory=dict)
    """The timings the fit came from, for the record."""

    def part(self, name: str, n: float) -> float:
        return sum(c * n**i for i, c in enumerate(self.coefficients.get(name, ())))

    def attention(
        self,
        active: float,
        candidates: float,
        kv_complete: bool = False,
        cache_skipped: bool = False,
        local_keys: float = 0.0,
    ) -> float:
        """Attention of ``active`` tokens in a layer whose probe computed keys for ``candidates`` tokens
        (``kv_complete``: attending over all of them; ``cache_skipped``: values for all of them too;
        ``local_keys`` > 0: every candidate also attends over that many keys of its local window and sinks,
        so all of them pay every projection)."""
        a = (*self.coefficients.get("attention", ()), 0.0, 0.0, 0.0)
        attended = candidates if kv_complete else active
        cost = a[0] + a[2] * active * attended
        if local_keys:
            # A causal prefill computes about half of its n^2 query-key pairs; a masked window computes all.
            return cost + a[1] * candidates + 2 * a[2] * candidates * min(local_keys, candidates / 2)
        extra = self.key_share + (self.value_share if kv_complete or cache_skipped else 0.0)
        return cost + a[1] * (active + extra * (candidates - active))

    def full_view(self, tail: float, length: float) -> float:
        """What ``full_view_tokens`` adds to a skipping layer: keys and values of every prompt token, and the
        attention of the last ``tail`` tokens over them."""
        a = (*self.coefficients.get("attention", ()), 0.0, 0.0, 0.0)
        return a[1] * (self.key_share + self.value_share) * length + a[2] * tail * length

    def full_layer(self, n: float) -> float:
        return self.attention(n, n) + self.part("ffn", n)

    def sparse_change(self, n: float, density: float, max_density: float) -> float:
        """Seconds block-sparse attention adds (negative: saves) to a layer's attention over ``n`` tokens."""
        estimate = self.part("sparse_estimate", n)
        if density > max_density:
            return estimate
        return estimate + density * self.part("sparse_kernel", n) - self.part("dense_core", n)

    def layer_seconds(
        self,
        config: SPTSConfig | None,
        length: int,
        scores_ffn_inputs: bool = False,
        densities: Mapping[int, float] | None = None,
    ) -> list[float]:
        """Predicted seconds of each layer's prefill of ``length`` tokens (``config`` None: the full model).
        ``densities``: measured block-sparse density per layer of ``config``'s sparse layers (without them, those
        layers are predicted dense)."""
        costs = [self.full_layer(length)] * self.num_layers
        if config is None:
            return costs
        plans = plan_layers(config, self.num_layers, length)
        kv_complete = bool(getattr(config, "kv_complete", False))
        cache_skipped = bool(getattr(config, "cache_skipped", False))
        window = int(getattr(config, "local_window", 0))
        local_keys = getattr(config, "local_sinks", 0) + 2 * window if window else 0
        for idx, plan in plans.items():
            n_cand, budget = plan.candidates, plan.budget
            select_attention = config.skip_attention and budget < n_cand
            select_ffn = config.skip_ffn and budget < n_cand
            active = budget if select_attention else n_cand
            cost = self.attention(
                active,
                n_cand,
                kv_complete and select_attention,
                cache_skipped and select_attention,
                local_keys if select_attention else 0,
            )
            cost += self.part("ffn", budget if select_ffn else n_cand)
            if getattr(config, "full_view_tokens", 0):
                cost += self.full_view(config.full_view_tokens, length)
            if select_attention or select_ffn or plan.scores_needed_next:
                cost += self.part("probe", n_cand)
            if select_ffn and scores_ffn_inputs:
                cost += self.part("ffn_score", n_cand)
            # Row traffic as the prefill does it (a gather, then an out-of-place scatter copying the tensor it
            # writes into): candidates out of and into the full residual, active rows out of and into candidates.
            if n_cand < length:
                cost += self.part("move", length)
            cost += self.part("move", n_cand) * (select_attention + select_ffn)
            costs[idx] = cost
        for idx in config.sparse_layers(self.num_layers) if densities else ():
            plan = plans.get(idx)
            n = length if plan is None else min(plan.budget if config.skip_attention else length, plan.candidates)
            costs[idx] += self.sparse_change(n, densities.get(idx, 1.0), config.sparse_max_density)
        return costs

    def prefill_seconds(
        self,
        config: SPTSConfig | None,
        length: int,
        scores_ffn_inputs: bool = False,
        densities: Mapping[int, float] | None = None,
    ) -> float:
        layers = self.layer_seconds(config, length, scores_ffn_inputs, densities)
        return sum(layers) + self.overhead_per_token * length

    def speedup(
        self,
        config: SPTSConfig,
        length: int,
        scores_ffn_inputs: bool = False,
        densities: Mapping[int, float] | None = None,
    ) -> float:
        """Predicted TTFT of the full model over ``config``'s, for a ``length``-token prompt."""
        spts_seconds = self.prefill_seconds(config, length, scores_ffn_inputs, densities)
        return self.prefill_seconds(None, length) / spts_seconds if spts_seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "coefficients": {k: list(v) for k, v in self.coefficients.items()},
            "key_share": self.key_share,
            "value_share": self.value_share,
            "overhead_per_token": self.overhead_per_token,
            "key": dict(self.key),
            "samples": dict(self.samples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedModel:
        return cls(
            num_layers=int(data["num_layers"]),
            coefficients={k: tuple(float(c) for c in v) for k, v in data["coefficients"].items()},
            key_share=float(data.get("key_share", 0.125)),
            value_share=float(data.get("value_share", 0.125)),
            overhead_per_token=float(data.get("overhead_per_token", 0.0)),
            key=dict(data.get("key", {})),
            samples=dict(data.get("samples", {})),
        )


def kv_fraction(config: SPTSConfig, num_layers: int, length: int) -> float:
    """Share of a full prefill's KV cache the config keeps, from its plan."""
    cache_all = bool(getattr(config, "kv_complete", False) or getattr(config, "cache_skipped", False))
    plans = plan_layers(config, num_layers, length)
    kept = 0
    for idx in range(num_layers):
        plan = plans.get(idx)
        if plan is None:
            kept += length
        else:
            select = config.skip_attention and plan.budget < plan.candidates
            kept += plan.candidates if cache_all or not select else plan.budget
    return kept / (num_layers * length)


def fit_polynomial(ns: list[float], seconds: list[float], degree: int) -> tuple[float, ...]:
    """Least squares ``seconds ~ sum c_i n^i`` with every ``c_i >= 0`` (a negative term is dropped and the rest
    refitted), columns scaled so that ``n^2`` at 32K tokens does not swamp the constant."""
    x = np.asarray(ns, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    active = list(range(degree + 1))
    scale = [float(x.max() ** i) or 1.0 for i in range(degree + 1)]
    coefficients = np.zeros(degree + 1)
    while active:
        design = np.stack([x**i / scale[i] for i in active], axis=1)
        solution, *_ = np.linalg.lstsq(design, y, rcond=None)
        if (solution >= 0).all():
            coefficients[:] = 0.0
            for i, value in zip(active, solution, strict=True):
                coefficients[i] = value / scale[i]
            break
        active.remove(active[int(np.argmin(solution))])
    return tuple(float(c) for c in coefficients)


def speed_key(model: nn.Module, length: int, ffn_policy: str, sparse_block: int | None = None) -> dict[str, Any]:
    """What a measured speed model depends on: reused from the cache only when all of it is the same."""
    config = model.config
    parameter = next(model.parameters())
    device = parameter.device
    return {
        "model_type": getattr(config, "model_type", None),
        "shape": [getattr(config, k, None) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                      "num_attention_heads", "num_key_value_heads")],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {platform.machine()}",
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": str(parameter.dtype),
        "torch": torch.__version__,
        "attention": config._attn_implementation,
        "ffn_policy": ffn_policy,
        "length": length,
        **({"sparse_block": sparse_block} if sparse_block is not None else {}),
    }  # fmt: skip
