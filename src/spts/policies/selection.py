"""Top-k token selection that always keeps the last token and preserves causal order."""

from __future__ import annotations

import torch


def top_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k), ascending, of the k highest-scoring tokens of each row; the last one always in.

    The last token is forced in because it is the one whose next-token prediction we need: its
    update must never be skipped. Ascending order keeps the subset causally ordered, so attention
    among the kept tokens can use a plain causal mask.
    """
    n = scores.shape[-1]
    if k >= n:
        return torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    forced = scores.clone()
    forced[:, -1] = float("inf")
    return forced.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
