"""Block-sparse attention's selection variants: the dense tail (SPTSConfig.sparse_query_tokens: the query blocks
of the prompt's last tokens, where a question sits, attend to every earlier block) and the per-head threshold
(SPTSConfig.sparse_per_head: every query head keeps the threshold's share of its own estimated mass)."""

from __future__ import annotations

import pytest
import torch

import spts
from conftest import tiny_model
from spts import SPTSConfig
from spts.methods.specs import resolve_method
from spts.policies.sparse import (
    antidiagonal_block_mass,
    kept_blocks,
    kept_counts,
    rank_blocks,
    round_up_counts,
    with_dense_tail,
)

BASE = dict(start_layer=3, stage_boundaries=(), budgets=(4096,))


def _mass(blocks: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.rand((2, 3, blocks, blocks), generator=torch.Generator().manual_seed(seed)) ** 4 * 10


@pytest.mark.parametrize(("length", "block", "tail", "dense_rows"), [
    (136, 8, 1, 1),  # the last token alone: its block
    (136, 8, 8, 1),  # exactly the last block
    (136, 8, 9, 2),  # one token into the block before
    (130, 8, 3, 2),  # a partial last block of 2 tokens and one token before it: blocks 16 and 15
    (136, 8, 10_000, 17),  # longer than the prompt: every row
    (136, 8, 0, 0),
])  # fmt: skip
def test_dense_tail_keeps_every_causal_block_of_exactly_the_tail_rows(length, block, tail, dense_rows):
    mass = _mass()
    order = rank_blocks(mass)
    counts = kept_counts(mass, order, 0.3, 0.0)
    tailed = with_dense_tail(counts, length, block, tail)
    causal = torch.arange(1, 18)
    rows = 17 - dense_rows
    assert torch.equal(tailed[..., rows:], causal[rows:].expand_as(tailed[..., rows:]))
    assert torch.equal(tailed[..., :rows], counts[..., :rows]), "rows outside the tail must not change"
    kept = kept_blocks(order, round_up_counts(tailed))
    lower = torch.ones(17, 17, dtype=torch.bool).tril()
    assert kept[..., rows:, :].eq(lower[rows:]).all(), "a tail row must keep its causal blocks and nothing after"


def test_dense_tail_only_adds_blocks_and_stays_monotone_in_the_threshold():
    mass = _mass(seed=3)
    order = rank_blocks(mass)
    previous = None
    for threshold in (0.1, 0.5, 0.9, 1.0):
        counts = kept_counts(mass, order, threshold, 0.0)
        tailed = with_dense_tail(counts, 17 * 8, 8, 20)
        assert (tailed >= counts).all()
        kept = kept_blocks(order, round_up_counts(tailed))
        if previous is not None:
            assert not (previous & ~kept).any()
        previous = kept


def test_a_tail_covering_the_prompt_gives_the_unmodified_models_logits():
    model = tiny_model("qwen2")
    ids = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(1))
    reference = model(ids).logits
    config = SPTSConfig(**BASE, sparse_from=0, sparse_block=8, sparse_threshold=0.05, sparse_max_density=1.0)
    with spts.enabled(model, config.with_(sparse_query_tokens=200)):
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=2e-5)
        stats = spts.last_stats(model).sparse
        assert stats and all(s.density == 1.0 and not s.dense_fallback for s in stats.values())
    with spts.enabled(model, config.with_(sparse_query_tokens=16)):
        tailed = model(ids).logits
        tail_density = {i: s.density for i, s in spts.last_stats(model).sparse.items()}
    with spts.enabled(model, config):
        plain = model(ids).logits
        assert all(s.density < tail_density[i] for i, s in spts.last_stats(model).sparse.items())
    # The last token's block attends densely in every layer, but it reads keys that sparse rows computed.
    assert not torch.allclose(tailed[:, -1], plain[:, -1], atol=1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.9, 0.99])
def test_per_head_threshold_holds_for_every_head_and_adds_to_the_groups(threshold):
    generator = torch.Generator().manual_seed(int(threshold * 100))
    query, key = torch.randn(1, 6, 160, 16, generator=generator) * 3, torch.randn(1, 2, 160, 16, generator=generator)
    head_mass = antidiagonal_block_mass(query, key, 16, 0.25, per_head=True)
    group_mass = antidiagonal_block_mass(query, key, 16, 0.25)
    assert head_mass.shape == (1, 2, 3, 10, 10)
    torch.testing.assert_close(head_mass.sum(2), group_mass)
    order = rank_blocks(head_mass)
    assert torch.equal(order, rank_blocks(group_mass)), "the group's order is shared by its heads"
    counts = kept_counts(head_mass, order, threshold, 0.0)
    assert (counts >= kept_counts(group_mass, order, threshold, 0.0)).all()
    kept = kept_blocks(order, counts)
    held = (head_mass * kept.unsqueeze(2)).sum(-1)
    assert (held >= threshold * head_mass.sum(-1) - 1e-4).all(), "a head kept less than the threshold of its mass"


def test_method_spec_and_validation():
    base = SPTSConfig(**BASE)
    config = resolve_method("spts+sparse0.9:L1:Q256:H", base).config
    assert (config.sparse_from, config.sparse_query_tokens, config.sparse_per_head) == (1, 256, True)
    plain = resolve_method("spts+sparse0.9", base).config
    assert (plain.sparse_query_tokens, plain.sparse_per_head) == (0, False)
    # A field added at its default keeps the fingerprints of results recorded before it existed.
    assert resolve_method("spts+sparse0.9:Q0", base).fingerprint == resolve_method("spts+sparse0.9", base).fingerprint
    assert resolve_method("spts+sparse0.9:Q64", base).fingerprint != resolve_method("spts+sparse0.9", base).fingerprint
    with pytest.raises(ValueError, match="sparse_query_tokens"):
        SPTSConfig(**BASE, sparse_query_tokens=-1)
    with pytest.raises(ValueError, match="sparse_per_head"):
        SPTSConfig(**BASE, sparse_per_head=1)
    with pytest.raises(ValueError, match=r"\[:Q<tokens>\]\[:H\]"):
        resolve_method("spts+sparse0.9:Qx", base)
