"""Sliding-window attention with attention sinks, computed block by block so that it costs ``O(n * window)``.

It gives the candidates a skipping layer does not select an approximate attention update
(``SPTSConfig.local_window``): each attends to the ``window`` candidates up to itself and to the first
``sinks`` candidates, as StreamingLLM keeps them. Queries are cut into blocks of ``window`` rows; a block's
keys are its own block and the one before (every key the window can reach) plus the sinks, so the model's
own attention function runs on ``(blocks, window + sinks)``-sized problems with an additive mask, and its
numerics (eager, SDPA) are those of the unmodified layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional


def _window_mask(n: int, window: int, sinks: int, blocks: int, like: torch.Tensor) -> torch.Tensor:
    """Additive mask (blocks, 1, window, sinks + 2 * window): which keys each query of each block may see."""
    device = like.device
    block = torch.arange(blocks, device=device)[:, None, None]
    query = block * window + torch.arange(window, device=device)[None, :, None]
    # Keys of block j: sinks 0..sinks-1, then rows (j - 1) * window ... (j + 1) * window - 1 of the sequence.
    local = (block - 1) * window + torch.arange(2 * window, device=device)[None, None, :]
    in_window = (local <= query) & (local > query - window) & (local >= 0) & (local < n)
    sink = torch.arange(sinks, device=device)[None, None, :].expand(blocks, window, sinks)
    # A sink the window already covers is seen once, through the window.
    sink_visible = (sink < n) & (sink <= query - window)
    visible = torch.cat((sink_visible, in_window), dim=-1)
    mask = torch.zeros(visible.shape, dtype=like.dtype, device=device)
    return mask.masked_fill(~visible, torch.finfo(like.dtype).min)[:, None]


def local_attention(
    attention_function: Callable,
    module: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    window: int,
    sinks: int,
    scaling: float,
) -> torch.Tensor:
    """Attention of every row of ``queries`` (B, heads, n, d) over the ``window`` rows of ``keys``/``values``
    (B, kv_heads, n, d) up to itself and the first ``sinks`` rows; returns (B, n, heads, d) as transformers'
    attention functions do."""
    batch, heads, n, dim = queries.shape
    sinks = min(sinks, n)
    if window >= n:
        # The window spans the sequence: plain causal attention (sinks are inside it).
        blocked = torch.ones(n, n, dtype=torch.bool, device=queries.device).triu(1)
        mask = torch.zeros(n, n, dtype=queries.dtype, device=queries.device).masked_fill(
            blocked, torch.finfo(queries.dtype).min
        )
        out, _ = attention_function(module, queries, keys, values, mask[None, None], dropout=0.0, scaling=scaling)
        return out
    blocks = -(-n // window)
    padded = blocks * window

    def key_windows(t: torch.Tensor) -> torch.Tensor:
        # One block of padding before (block 0 has no predecessor) and up to a whole block after.
        t = functional.pad(t, (0, 0, window, padded - n))
        split = t.view(batch, t.shape[1], blocks + 1, window, dim)
        local = torch.cat((split[:, :, :-1], split[:, :, 1:]), dim=3)
        sink = t[:, :, window : window + sinks][:, :, None].expand(-1, -1, blocks, -1, -1)
        both = torch.cat((sink, local), dim=3)  # (B, kv_heads, blocks, sinks + 2 * window, d)
        return both.transpose(1, 2).reshape(batch * blocks, t.shape[1], sinks + 2 * window, dim)

    q = functional.pad(queries, (0, 0, 0, padded - n)).view(batch, heads, blocks, window, dim)
    q = q.transpose(1, 2).reshape(batch * blocks, heads, window, dim)
    mask = _window_mask(n, window, sinks, blocks, queries).repeat(batch, 1, 1, 1)
    out, _ = attention_function(
        module, q, key_windows(keys), key_windows(values), mask, dropout=0.0, scaling=scaling
    )  # (B * blocks, window, heads, d)
    return out.reshape(batch, padded, heads, dim)[:, :n]
