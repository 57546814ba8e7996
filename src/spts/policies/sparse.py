"""Which key blocks block-sparse prefill attention keeps (``SPTSConfig.sparse_*``).

The attention of a prefill of ``T`` tokens is cut into ``block x block`` tiles. For every KV group and query
block, a cheap estimate of how much attention mass falls in each causal key block ranks them, and the query block
keeps the highest-ranked blocks until they hold ``threshold`` of its estimated mass, and always its first block
(the attention sink) and the local band (its own, diagonal block and the one before it).

The estimate is XAttention's antidiagonal scoring (Xu et al. 2025, arXiv 2503.16428; mit-han-lab/x-attention,
``xattn_estimate``), written here for grouped-query heads and causal chunks: queries and keys are cut into
``stride``-token pieces; reduced query row ``i`` concatenates the queries ``i*stride + stride-1-s`` and reduced
key ``j`` the keys ``j*stride + s`` (``s = 0..stride-1``), so one dot product of a reduced row and a reduced key
sums one antidiagonal of the ``stride x stride`` tile of attention logits. Its softmax over the reduced keys,
summed over each block's tiles and over a group's query heads, is the group's estimated mass per block. It costs
``1/stride`` of the attention's query-key products. The cumulative-mass threshold per query block follows
FlexPrefill (Lai et al. 2025, arXiv 2502.20766) and XAttention; selection per KV group, so the heads that share
keys also share the gathered blocks. Two options guard what the group's summed mass can hide: the threshold held
per query head (each head keeps that share of its own estimated mass, as XAttention and FlexPrefill select per
head, in the group's shared order) and a dense tail (the query blocks of the prompt's last tokens keep every block).
"""

from __future__ import annotations

import math

import torch

LOCAL_BLOCKS = 2
"""Width of the local band in blocks: the diagonal block and the one before it, always kept."""

CHUNKS = 4
ESTIMATE_CHUNK_ELEMENTS = 1 << 25
"""Largest reduced score tensor the estimate holds at once (elements); bounds its memory at 128K tokens."""


def estimate_stride(block: int) -> int:
    """Antidiagonal stride for ``block``-token blocks: 8 samples per block side, as XAttention's stride 16 at
    block 128."""
    return max(1, block // 8)


def antidiagonal_block_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    block: int,
    scaling: float,
    stride: int | None = None,
    per_head: bool = False,
) -> torch.Tensor:
    """Estimated attention mass per (KV group, query block, key block): (B, kv_heads, nb, nb), zero above the
    diagonal; with ``per_head``, per query head of each group: (B, kv_heads, heads_per_group, nb, nb). ``query``
    (B, heads, T, d), ``key`` (B, kv_heads, T, d), as transformers' attention functions take them;
    ``nb = ceil(T / block)``. Each query block row sums to about ``block / stride`` per query head."""
    stride = stride or estimate_stride(block)
    if block % stride:
        raise ValueError(f"the estimate's stride {stride} must divide the block size {block}")
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    blocks = -(-length // block)
    padded = blocks * block
    if padded != length:  # zero rows: they fall in the last block, after every real query and key
        query = torch.nn.functional.pad(query, (0, 0, 0, padded - length))
        key = torch.nn.functional.pad(key, (0, 0, 0, padded - length))
    reduced = padded // stride
    per_block = block // stride
    rows = query.reshape(batch, kv_heads, group, reduced, stride, dim).flip(4)
    rows = rows.reshape(batch, kv_heads, group, reduced, stride * dim)
    cols = key.reshape(batch, kv_heads, reduced, stride * dim)
    scale = scaling / stride  # the mean logit along the antidiagonal
    heads_kept = group if per_head else 1
    mass = query.new_zeros(batch, kv_heads, heads_kept, blocks, blocks, dtype=torch.float32)
    # Chunks of whole query blocks, each scored only up to its own last key (causality): four chunks or more
    # waste at most an eighth of the products on the future, and memory stays bounded.
    fitting = ESTIMATE_CHUNK_ELEMENTS // max(1, batch * heads * per_block * reduced)
    chunk_blocks = max(1, min(-(-blocks // CHUNKS), fitting))
    reduced_index = torch.arange(reduced, device=query.device)
    for first in range(0, blocks, chunk_blocks):
        last = min(blocks, first + chunk_blocks)
        r0, r1 = first * per_block, last * per_block
        # A group's query heads stacked as rows of one product with the group's keys.
        chunk = rows[:, :, :, r0:r1].reshape(batch, kv_heads, group * (r1 - r0), stride * dim)
        scores = torch.matmul(chunk, cols[:, :, :r1].transpose(-1, -2)).float().mul_(scale)
        scores = scores.view(batch, kv_heads, group, r1 - r0, r1)
        future = reduced_index[None, :r1] > reduced_index[r0:r1, None]
        probabilities = scores.masked_fill_(future, float("-inf")).softmax(-1)
        if not per_head:
            probabilities = probabilities.sum(2, keepdim=True)
        tiles = probabilities.view(batch, kv_heads, heads_kept, last - first, per_block, last, per_block)
        mass[:, :, :, first:last, :last] = tiles.sum(dim=(4, 6))
    return mass if per_head else mass.squeeze(2)


def _forced_blocks(blocks: int, device: torch.device) -> torch.Tensor:
    """(nb, nb) bool: the sink and the local band of each query block (causal only)."""
    index = torch.arange(blocks, device=device)
    offset = index[:, None] - index[None, :]  # query block - key block
    return (offset >= 0) & ((index[None, :] == 0) | (offset < LOCAL_BLOCKS))


def rank_blocks(mass: torch.Tensor) -> torch.Tensor:
    """Key blocks of each query block in the order they are kept (B, G, nb, nb): the diagonal first, then the
    rest of the local band, the sink, the other causal blocks by estimated mass (ties: earlier first), then the
    blocks in the future of the query block. A per-head ``mass`` (B, G, heads, nb, nb) ranks by the group's sum."""
    if mass.dim() == 5:
        mass = mass.sum(2)
    blocks = mass.shape[-1]
    index = torch.arange(blocks, device=mass.device)
    offset = index[:, None] - index[None, :]  # query block - key block
    priority = mass.float().clone()
    priority.masked_fill_(offset < 0, float("-inf"))
    forced = _forced_blocks(blocks, mass.device)
    # Forced blocks ahead of all others, the diagonal ahead of them (kernels rely on it being kept).
    priority = torch.where(forced, torch.full_like(priority, 3e38), priority)
    priority = torch.where(offset == 0, torch.full_like(priority, float("inf")), priority)
    return priority.argsort(dim=-1, descending=True, stable=True)


def kept_counts(mass: torch.Tensor, order: torch.Tensor, threshold: float, min_density: float) -> torch.Tensor:
    """How many of ``order``'s leading blocks each query block keeps (B, G, nb): the fewest whose estimated mass
    reaches ``threshold`` of the row's causal mass, at least the forced ones and ``ceil(min_density *
    causal blocks)``, at most the causal blocks; every causal block at ``threshold >= 1``. With a per-head
    ``mass`` (B, G, heads, nb, nb), the fewest that hold ``threshold`` of every query head's own mass, in the
    group's order: the group's sum lets its sharper heads fill the threshold while a diffuse head keeps far less
    of its own mass (docs/sparse.md)."""
    blocks = mass.shape[-1]
    causal = torch.arange(1, blocks + 1, device=mass.device)  # causal blocks of query block i: i + 1
    if threshold >= 1.0:
        return causal.expand(order.shape[:-1]).clone()
    index = torch.arange(blocks, device=mass.device)
    row_mass = mass.float().masked_fill(index[None, :] > index[:, None], 0.0)
    per_head = mass.dim() == order.dim() + 1
    ranked = row_mass.gather(-1, order.unsqueeze(2).expand_as(row_mass) if per_head else order)
    before = ranked.cumsum(-1) - ranked  # mass of the blocks ranked ahead of each one
    total = row_mass.sum(-1, keepdim=True)
    needed = (before < threshold * total).sum(-1)
    if per_head:
        needed = needed.amax(2)
    forced = torch.clamp(causal, max=LOCAL_BLOCKS) + (causal > LOCAL_BLOCKS).long()
    minimum = torch.ceil(min_density * causal.double() - 1e-9).long()
    return torch.minimum(torch.maximum(torch.maximum(needed, forced), minimum), causal)


def with_dense_tail(counts: torch.Tensor, length: int, block: int, tail_tokens: int) -> torch.Tensor:
    """``counts`` with every query block that holds one of the prompt's last ``tail_tokens`` tokens keeping all
    its causal blocks. Those rows are where a prompt usually asks its question: an estimate that misses the one
    block a question points at (a needle among look-alikes) changes the answer, and they cost only about
    ``2 * tail_blocks / blocks`` of the attention (FlexPrefill's query-aware estimate reads the same rows)."""
    if tail_tokens <= 0:
        return counts
    blocks = counts.shape[-1]
    first = max(0, length - tail_tokens) // block
    causal = torch.arange(1, blocks + 1, device=counts.device)
    return torch.where(torch.arange(blocks, device=counts.device) >= first, causal, counts)


def round_up_counts(counts: torch.Tensor, growth: float = 1.25) -> torch.Tensor:
    """``counts`` rounded up to a geometric ladder (1, 2, 3, 4, 5, 6, 8, 10, 13, ...), capped at each row's
    causal blocks. Kernels batch the query blocks that keep equally many blocks; rounding up (with the next
    blocks of the ranking, never with padding) makes few sizes. It only ever adds blocks, so it keeps every
    guarantee of :func:`kept_counts` and stays monotone in the threshold."""
    blocks = counts.shape[-1]
    ladder = [1]
    while ladder[-1] < blocks:
        ladder.append(max(ladder[-1] + 1, math.ceil(ladder[-1] * growth)))
    steps = torch.tensor(ladder, device=counts.device)
    rounded = steps[torch.searchsorted(steps, counts)]
    causal = torch.arange(1, blocks + 1, device=counts.device)
    return torch.minimum(rounded, causal)


def kept_blocks(order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The kept blocks as a mask (B, G, nb, nb): the first ``counts`` blocks of ``order`` in each row."""
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return rank < counts[..., None]


def density(counts: torch.Tensor) -> float:
    """Kept blocks over causal blocks (1.0: dense)."""
    blocks = counts.shape[-1]
    return float(counts.sum()) / (counts[..., :1].numel() * blocks * (blocks + 1) / 2)
