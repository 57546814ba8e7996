"""Block-sparse causal attention over the key blocks :mod:`spts.policies.sparse` keeps, one kernel per device.

* ``gather`` (CPU): for every (KV group, query block) the kept key blocks are gathered into one contiguous key
  and value sequence (ascending, the diagonal block last), and the query blocks that keep equally many blocks are
  batched into one call of PyTorch's fused SDPA kernel, with a mask that is causal inside the diagonal block
  only. A group's query heads share its gathered keys. Few, large calls: the counts are rounded up to a
  geometric ladder first (:func:`spts.policies.sparse.round_up_counts`).
* ``flex`` (GPU, or CPU for comparison): FlexAttention (``torch.nn.attention.flex_attention``, compiled) with a
  ``BlockMask`` built directly from the kept blocks: off-diagonal blocks as full blocks, the diagonal block as a
  partial block, and a ``mask_mod`` that is causal and itself says which blocks are kept (flex_attention's
  semantics are the ``mask_mod``'s; the block lists only let the compiled kernel skip work).

Both take ``query`` (B, heads, T, d), ``key``/``value`` (B, kv_heads, T, d) and return (B, T, heads, d), as
transformers' attention functions do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn import functional

from spts.policies.sparse import kept_blocks

GATHER_CHUNK_ELEMENTS = 1 << 24
"""Largest gathered key tensor one batched call holds (elements), so memory stays bounded at long prompts."""

KERNELS = ("gather", "flex")
FLEX_BLOCK_MULTIPLE = {False: 16, True: 128}
"""sparse_block must be a multiple of this for the flex kernel (on CPU, on CUDA): the kernels' tiles. On CPU,
blocks of 8 gave wrong results where 16 gave right ones (torch 2.13); on CUDA the Triton templates tile by up to 128."""


def default_kernel(device: torch.device) -> str:
    """The faster kernel on this device (benchmarks/sparse_kernels.py measures both)."""
    return "flex" if device.type == "cuda" else "gather"


def block_sparse_attention(
    kernel: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    block: int,
    scaling: float,
) -> torch.Tensor:
    """Causal attention over the first ``counts`` blocks of ``order`` per (batch, KV group, query block)."""
    if kernel == "gather":
        return gathered_attention(query, key, value, order, counts, block, scaling)
    if kernel == "flex":
        return flex_block_attention(query, key, value, order, counts, block, scaling)
    raise ValueError(f"unknown block-sparse kernel {kernel!r}; known: {', '.join(KERNELS)}")


def _pad_to_blocks(x: torch.Tensor, padded: int) -> torch.Tensor:
    return x if x.shape[2] == padded else functional.pad(x, (0, 0, 0, padded - x.shape[2]))


@functools.lru_cache(maxsize=64)
def _tail_causal_mask(n_blocks: int, block: int, device: torch.device) -> torch.Tensor:
    """(block, n_blocks * block) bool: every earlier block visible, the last (diagonal) block causal."""
    mask = torch.ones(block, n_blocks * block, dtype=torch.bool, device=device)
    mask[:, -block:] = torch.ones(block, block, dtype=torch.bool, device=device).tril()
    return mask


def gathered_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    block: int,
    scaling: float,
) -> torch.Tensor:
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    blocks = -(-length // block)
    padded = blocks * block
    rows = batch * kv_heads
    q = _pad_to_blocks(query, padded).reshape(rows, group, blocks, block, dim)
    k = _pad_to_blocks(key, padded).reshape(rows * blocks, block, dim)
    v = _pad_to_blocks(value, padded).reshape(rows * blocks, block, dim)
    out = query.new_empty(rows, blocks, group, block, dim)
    flat_counts = counts.reshape(rows * blocks)
    flat_order = order.reshape(rows * blocks, blocks)
    for n in torch.unique(flat_counts).tolist():
        pairs = (flat_counts == n).nonzero().flatten()
        per_call = max(1, GATHER_CHUNK_ELEMENTS // (n * block * dim))
        mask = _tail_causal_mask(n, block, query.device)
        for chunk in pairs.split(per_call):
            r, i = chunk // blocks, chunk % blocks
            # Ascending block order puts the diagonal block (the largest kept index) last, where the mask is causal.
            chosen = flat_order[chunk, :n].sort(dim=-1).values + (r * blocks)[:, None]
            keys = k[chosen].reshape(len(chunk), 1, n * block, dim).expand(-1, group, -1, -1)
            values = v[chosen].reshape(len(chunk), 1, n * block, dim).expand(-1, group, -1, -1)
            out[r, i] = functional.scaled_dot_product_attention(q[r, :, i], keys, values, attn_mask=mask, scale=scaling)
    out = out.reshape(batch, kv_heads, blocks, group, block, dim).permute(0, 2, 4, 1, 3, 5)
    return out.reshape(batch, padded, heads, dim)[:, :length]


@functools.cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    # Static shapes: dynamic ones failed to build on CPU (torch 2.13, inductor's C++ template). Prompt lengths are
    # padded to a coarse grid (_flex_length) so that few shapes compile: past dynamo's recompile limit, flex_attention
    # would run eagerly, correct (the mask_mod says which blocks are kept) but over the whole score matrix.
    return torch.compile(flex_attention, dynamic=False)


def _flex_length(length: int, block: int) -> int:
    """``length`` rounded up to a grid of 8 steps per power of two (at least one block): at most ~12% padding."""
    step = -(-(1 << max(0, length.bit_length() - 4)) // block) * block
    return -(-length // step) * step


@functools.cache
def _from_kv_blocks_parameters() -> frozenset[str]:
    import inspect

    from torch.nn.attention.flex_attention import BlockMask

    return frozenset(inspect.signature(BlockMask.from_kv_blocks).parameters)


def flex_block_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    block: int,
    scaling: float,
) -> torch.Tensor:
    from torch.nn.attention.flex_attention import BlockMask

    length = query.shape[2]
    group = query.shape[1] // key.shape[1]
    if block % FLEX_BLOCK_MULTIPLE[query.device.type == "cuda"]:
        raise ValueError(
            f"the flex kernel needs sparse_block to be a multiple of {FLEX_BLOCK_MULTIPLE[query.device.type == 'cuda']}"
            f" on {query.device.type} (its tiles); got {block}: use sparse_block=128 or SPTS_SPARSE_KERNEL=gather"
        )
    padded = _flex_length(length, block)
    blocks = padded // block
    # Padded rows and columns come after every real query and key: only their own diagonal block is kept.
    kept = torch.eye(blocks, dtype=torch.bool, device=query.device).repeat(*order.shape[:2], 1, 1)
    real = order.shape[-1]
    kept[..., :real, :real] = kept_blocks(order, counts)
    visible = kept.repeat_interleave(group, dim=1)
    query, key, value = (functional.pad(x, (0, 0, 0, padded - length)) for x in (query, key, value))

    # The mask itself says which blocks are kept, so that any path of flex_attention computes the same attention;
    # the compiled kernel evaluates it only inside the partial (diagonal) blocks and skips every block not listed.
    def kept_and_causal(batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor):
        return (q_idx >= kv_idx) & visible[batch, head, q_idx // block, kv_idx // block]

    diagonal = torch.eye(blocks, dtype=torch.bool, device=kept.device)
    full = visible & ~diagonal
    full_num = full.sum(-1, dtype=torch.int32)
    full_idx = full.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    partial_num = torch.ones_like(full_num)
    partial_idx = torch.arange(blocks, device=kept.device, dtype=torch.int32)[:, None].expand_as(full_idx)
    # Forward only: the transposed (query-side) block indices serve the backward pass, where torch can skip them.
    forward_only = {"compute_q_blocks": False} if "compute_q_blocks" in _from_kv_blocks_parameters() else {}
    block_mask = BlockMask.from_kv_blocks(
        partial_num, partial_idx.contiguous(), full_num, full_idx, BLOCK_SIZE=block, mask_mod=kept_and_causal,
        seq_lengths=(padded, padded), **forward_only,
    )  # fmt: skip
    out = _compiled_flex()(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=group > 1)
    return out[:, :, :length].transpose(1, 2).contiguous()
