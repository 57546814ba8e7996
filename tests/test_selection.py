"""Selection and probing policies, checked against direct computations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FAMILIES, tiny_model
from spts.adapters import adapter_for
from spts.policies import attention_probe_scores, layer_inputs, pool_scores, probe_layer_input, top_tokens


@settings(deadline=None, max_examples=60)
@given(n=st.integers(1, 64), k=st.integers(1, 80), batch=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_top_tokens_keeps_last_sorted_unique(n, k, batch, seed):
    scores = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed))
    picked = top_tokens(scores, k)
    assert picked.shape == (batch, min(k, n))
    assert (picked[:, -1] == n - 1).all()
    assert (picked.diff(dim=1) > 0).all()
    if k < n:
        for row in range(batch):
            rest = [i for i in picked[row].tolist() if i != n - 1]
            threshold = sorted(scores[row, :-1].tolist(), reverse=True)[len(rest) - 1] if rest else None
            assert all(scores[row, i] >= threshold for i in rest) if rest else True


def test_probe_scores_equal_mean_softmax_over_heads_with_gqa():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 6, 1, 8, generator=generator)  # 6 query heads
    keys = torch.randn(2, 3, 10, 8, generator=generator)  # 3 KV heads: groups of 2
    scores = attention_probe_scores(queries, keys, scaling=8**-0.5)
    expected = torch.stack(
        [torch.softmax((queries[:, h, 0][:, None] * keys[:, h // 2]).sum(-1) * 8**-0.5, dim=-1) for h in range(6)]
    ).mean(0)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2))


def test_multiple_probe_tokens_are_causal():
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(1, 2, 3, 4, generator=generator)
    keys = torch.randn(1, 2, 7, 4, generator=generator)
    scores = attention_probe_scores(queries, keys, 0.5, probe_offsets=torch.tensor([4, 5, 6]))
    # Key 6 is visible only to the last probe token: its weight comes from one of three queries.
    only_last = attention_probe_scores(queries[:, :, 2:], keys, 0.5)[0, 6] / 3
    torch.testing.assert_close(scores[0, 6], only_last)


def test_pooling_lets_neighbours_share_a_peak():
    scores = torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.2]])
    pooled = pool_scores(scores, 5)
    assert torch.equal(pooled, torch.tensor([[0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2, 0.2]]))
    assert torch.equal(pool_scores(scores, 1), scores)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("probe_tokens", "aggregation"), [(1, "mean"), (3, "mean"), (3, "max")])
def test_probe_layer_input_matches_the_models_attention(family, probe_tokens, aggregation):
    """The analysis probe equals the unmodified model's eager attention probabilities of the last tokens."""
    model = tiny_model(family, attn="eager")
    adapter = adapter_for(model)
    layer_idx = 2
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(3))
    attentions = model(ids, output_attentions=True).attentions[layer_idx]  # (1, heads, 20, 20)
    hidden, position_embeddings = layer_inputs(model, ids, [layer_idx])[layer_idx]
    scores = probe_layer_input(
        adapter, adapter.layers()[layer_idx], hidden, position_embeddings, probe_tokens, aggregation
    )
    per_head = attentions[:, :, -probe_tokens:].float().mean(dim=2)
    expected = per_head.mean(dim=1) if aggregation == "mean" else per_head.amax(dim=1)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
