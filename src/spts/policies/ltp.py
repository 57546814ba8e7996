"""LTP: a low-rank proxy of each layer's FFN predicts how much the FFN would change each token.

The proxy keeps the ``d_low`` intermediate channels that matter most on calibration text and
factorises the gate and up projections of those channels with rank ``r``:
``f(x) = act(x U_g V_g) * (x U_u V_u)``. A token's predicted update size is the norm of ``f(x)``
with each channel weighted by its down-projection column norm (see ``docs/ltp.md`` for the
variants measured). The FFN then runs for the top tokens by ``||f(x)|| * S_MHA``: a token is
skipped only if it is both unimportant to the last token and barely transformed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

VARIANTS = ("gate_up", "gate_up_down_norm", "gate_up_down")
"""How the proxy's intermediate output becomes a magnitude:
``gate_up``: plain norm over the kept channels; ``gate_up_down_norm``: channels weighted by the norms
of their ``W_down`` columns (same cost); ``gate_up_down``: projected through ``W_down`` (costs
``hidden * d_low`` more per token)."""


@dataclass(frozen=True)
class LayerProxy:
    """The low-rank FFN proxy of one layer (tensors on any device; ``to`` moves them)."""

    channels: torch.Tensor  # (d_low,) kept intermediate channels
    gate_u: torch.Tensor  # (hidden, r)
    gate_v: torch.Tensor  # (r, d_low)
    up_u: torch.Tensor  # (hidden, r)
    up_v: torch.Tensor  # (r, d_low)
    down: torch.Tensor  # (hidden, d_low) columns of W_down for the kept channels

    def to(self, device: torch.device, dtype: torch.dtype) -> LayerProxy:
        moved = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in ("gate_u", "gate_v", "up_u", "up_v", "down")
        }
        return LayerProxy(channels=self.channels.to(device), **moved)

    def magnitude(self, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], variant: str) -> torch.Tensor:
        """Predicted ``||FFN(x)||`` ranking for normed FFN inputs ``x`` (..., hidden) -> (...)."""
        inner = act((x @ self.gate_u) @ self.gate_v) * ((x @ self.up_u) @ self.up_v)
        if variant == "gate_up":
            return inner.float().norm(dim=-1)
        if variant == "gate_up_down_norm":
            return (inner.float() * self.down.float().norm(dim=0)).norm(dim=-1)
        if variant == "gate_up_down":
            return (inner @ self.down.T).float().norm(dim=-1)
        raise ValueError(f"unknown LTP variant {variant!r}; known: {', '.join(VARIANTS)}")

    def flops_per_token(self, variant: str) -> int:
        hidden, rank = self.gate_u.shape
        d_low = self.gate_v.shape[1]
        flops = 2 * 2 * (hidden * rank + rank * d_low)
        return flops + (2 * hidden * d_low if variant == "gate_up_down" else 0)


@dataclass(frozen=True)
class LTPScorer:
    """FFN policy: ``S_FFN = ||f(x)|| * S_MHA`` with one proxy per skipping layer."""

    proxies: Mapping[int, LayerProxy]
    activations: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]
    variant: str = "gate_up_down_norm"
    needs_inputs: bool = True
    reuses_attention_selection: bool = False

    def score(self, layer_idx: int, ffn_inputs: torch.Tensor | None, attention_scores: torch.Tensor) -> torch.Tensor:
        assert ffn_inputs is not None
        magnitude = self.proxies[layer_idx].magnitude(ffn_inputs, self.activations[layer_idx], self.variant)
        return magnitude * attention_scores
