"""Top-k token selection that always keeps the last token (and any protected ones) and preserves causal order."""

from __future__ import annotations

import torch


def top_tokens(scores: torch.Tensor, k: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (B, k), ascending, of the k highest-scoring tokens of each row; the last one always in.

    The last token is forced in because it is the one whose next-token prediction we need: its
    update must never be skipped. ``forced`` (B, n) bool marks more tokens to keep before any other
    (protected tokens); when more are forced than ``k``, the earliest-ranked of them win arbitrarily.
    Ascending order keeps the subset causally ordered, so attention among the kept tokens can use a
    plain causal mask.
    """
    n = scores.shape[-1]
    if k >= n:
        return torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    ranked = scores.clone()
    if forced is not None:
        ranked = ranked.masked_fill(forced, float("inf"))
    ranked[:, -1] = float("inf")
    return ranked.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


def protected_tokens(positions: torch.Tensor, length: int, sinks: int, recent: int) -> torch.Tensor | None:
    """Which candidates (original ``positions``, (B, n)) are protected: the first ``sinks`` tokens of the prompt
    (attention sinks) and its last ``recent`` tokens (the question, usually). None when nothing is protected."""
    if not sinks and not recent:
        return None
    return (positions < sinks) | (positions >= length - recent)
