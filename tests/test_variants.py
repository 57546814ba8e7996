"""Selection variants (SPTSConfig fields): exact at unlimited budget, and doing what they say with small ones."""

from __future__ import annotations

import pytest
import torch

import spts
from conftest import ATTENTION, FAMILIES, tiny_model
from spts import SPTSConfig
from spts.policies import attention_probe_scores, protected_tokens, top_tokens
from spts.runtime.transformers_api import output_cache

UNLIMITED = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(4096, 4096, 4096), delta=0)
SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)
PROMPT = 48
VARIANTS = {
    "max-heads": {"head_aggregation": "max"},
    "sinks-recent": {"sink_tokens": 4, "recent_tokens": 8},
    "accumulate": {"accumulate_scores": True},
    "kv-complete": {"kv_complete": True},
    "cache-skipped": {"cache_skipped": True},
    "local-window": {"local_window": 8, "local_sinks": 2},
    "full-view": {"full_view_tokens": 1},
    "full-view-3": {"full_view_tokens": 3},
    "all": {"head_aggregation": "max", "sink_tokens": 2, "recent_tokens": 3, "accumulate_scores": True,
            "kv_complete": True, "probe_tokens": 4, "local_window": 5, "full_view_tokens": 2},
}  # fmt: skip


def _record_layer(layer, run):
    """``run()``'s result and ``layer``'s call during it: its full-length input, keyword arguments and output."""
    seen = {}

    def hook(module, args, kwargs, output):
        layer_input = args[0] if args else kwargs["hidden_states"]
        seen["call"] = (layer_input, kwargs, output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return result, seen["call"]


def _ids(model, length=PROMPT, seed=0):
    return torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_exact_at_unlimited_budget(variant, family, attn):
    model = tiny_model(family, attn)
    ids = _ids(model, 37)
    reference = model(ids, use_cache=True)
    with spts.enabled(model, UNLIMITED.with_(**VARIANTS[variant])):
        out = model(ids, use_cache=True)
        assert [layer.stage for layer in spts.last_stats(model).layers] == [None, 0, 0, 1, 1, 2]
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=1e-5)


def test_max_head_aggregation_takes_each_tokens_strongest_head():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(2, 6, 1, 8, generator=generator), torch.randn(2, 3, 10, 8, generator=generator)
    per_head = (queries.view(2, 3, 2, 8) @ keys.transpose(-1, -2) * 0.5).softmax(-1).view(2, 6, 10)
    torch.testing.assert_close(attention_probe_scores(queries, keys, 0.5, head_aggregation="max"), per_head.amax(1))
    torch.testing.assert_close(attention_probe_scores(queries, keys, 0.5), per_head.mean(1))
    with pytest.raises(ValueError, match="head_aggregation must be one of"):
        attention_probe_scores(queries, keys, 0.5, head_aggregation="median")


def test_protected_tokens_are_always_selected():
    positions = torch.arange(10)[None]
    protected = protected_tokens(positions, 10, sinks=2, recent=3)
    assert protected.tolist() == [[True, True, False, False, False, False, False, True, True, True]]
    assert protected_tokens(positions, 10, 0, 0) is None
    scores = torch.linspace(1, 0, 10)[None]  # the protected tokens score lowest but the first two
    assert top_tokens(scores, 6, protected).tolist() == [[0, 1, 2, 7, 8, 9]]


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_and_recent_tokens_stay_in_every_layers_cache(family):
    model = tiny_model(family)
    with spts.enabled(model, SMALL.with_(sink_tokens=3, recent_tokens=2)):
        model(_ids(model), use_cache=True)
        stats = spts.last_stats(model)
    for layer_idx in range(1, 6):
        kept = set(stats.kv_positions[layer_idx][0].tolist())
        assert {0, 1, 2, PROMPT - 2, PROMPT - 1} <= kept, layer_idx


def test_accumulated_scores_select_by_the_stage_sum(monkeypatch):
    """With fixed fake probe scores per layer, the second layer of a stage keeps the top of the two layers' sum."""
    calls = []

    def fake_scores(queries, keys, scaling, offsets=None, head_aggregation="mean"):
        n = keys.shape[2]
        layer_scores = torch.rand(1, n, generator=torch.Generator().manual_seed(len(calls)))
        calls.append(layer_scores)
        return layer_scores

    monkeypatch.setattr("spts.runtime.prefill.attention_probe_scores", fake_scores)
    config = SPTSConfig(start_layer=1, stage_boundaries=(), budgets=(10,))
    model = tiny_model("llama")
    for accumulate in (False, True):
        calls.clear()
        with spts.enabled(model, config.with_(accumulate_scores=accumulate)):
            model(_ids(model), use_cache=True)
            kept = spts.last_stats(model).kv_positions[2]
        expected = calls[0] + calls[1] if accumulate else calls[1]
        assert torch.equal(kept, top_tokens(expected, 10)), accumulate


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_kv_complete_caches_every_candidate_and_active_rows_see_them_all(family, attn):
    """In the first skipping layer every token is a candidate, so with kv_complete the active rows attend over all
    earlier tokens, exactly as in the unmodified layer: their output equals it; the other rows are unchanged."""
    model = tiny_model(family, attn)
    config = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(16, 8), delta=4, kv_complete=True)
    ids = _ids(model)
    layer = model.model.layers[1]
    _, (_, _, full_output) = _record_layer(layer, lambda: model(ids))
    with spts.enabled(model, config):
        out, (layer_input, _, spts_output) = _record_layer(layer, lambda: model(ids, use_cache=True))
        stats = spts.last_stats(model)
    assert spts.cache_tokens_per_layer(output_cache(out)) == [PROMPT, PROMPT, PROMPT, 12, 12, 12]
    assert stats.kv_tokens == [PROMPT, PROMPT, PROMPT, 12, 12, 12]
    assert [layer.attention_active for layer in stats.layers] == [PROMPT, 16, 16, 8, 8, 8]
    changed = (spts_output != layer_input).any(-1)[0]
    assert int(changed.sum()) == 16 and bool(changed[-1])
    torch.testing.assert_close(spts_output[0, changed], full_output[0, changed], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tail", [1, 3])
def test_full_view_tokens_attend_over_the_whole_prompt_in_every_skipping_layer(tail, family, attn):
    """With tiny budgets, the last ``tail`` tokens' rows of a deep skipping layer's output equal the unmodified
    layer's output on the same full-length input: they attend over every token, pruned ones included, and run the
    FFN; the cache still holds only what the schedule keeps."""
    model = tiny_model(family, attn)
    config = SMALL.with_(full_view_tokens=tail)
    ids = _ids(model)
    layer = model.model.layers[5]
    _, (_, stock_kwargs, _) = _record_layer(layer, lambda: model(ids))
    with spts.enabled(model, config):
        out, (layer_input, _, spts_output) = _record_layer(layer, lambda: model(ids, use_cache=True))
        stats = spts.last_stats(model)
    assert stats.kv_tokens[5] == 6 and spts.cache_tokens_per_layer(output_cache(out))[5] == 6
    uncached = ("hidden_states", "past_key_values", "past_key_value", "cache", "use_cache")
    stock = layer(layer_input, **{k: v for k, v in stock_kwargs.items() if k not in uncached})
    stock = stock[0] if isinstance(stock, tuple) else stock
    torch.testing.assert_close(spts_output[0, -tail:], stock[0, -tail:], rtol=0, atol=1e-5)
    # Without the option the last token reads only the 6 tokens the stage keeps: its row differs.
    with spts.enabled(model, SMALL):
        _, (_, _, paper_output) = _record_layer(layer, lambda: model(ids))
    assert not torch.allclose(paper_output[0, -1], stock[0, -1], atol=1e-4)


def test_full_view_tokens_beyond_the_budget_are_refused_clearly():
    model = tiny_model("llama")
    with spts.enabled(model, SMALL.with_(full_view_tokens=8)), pytest.raises(ValueError, match="too few to hold"):
        model(_ids(model))


def test_speed_model_charges_the_full_view_its_projections_and_attention():
    from spts.tuning.speed import SpeedModel

    speed = SpeedModel(
        num_layers=6,
        coefficients={"attention": (0.0, 4e-6, 4e-8), "ffn": (0.0, 6e-6), "probe": (0.0, 1e-7), "move": (0.0, 1e-8)},
    )
    schedule = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.1,))
    plain, viewing = speed.layer_seconds(schedule, 8192), speed.layer_seconds(schedule.with_(full_view_tokens=2), 8192)
    extra = 4e-6 * (speed.key_share + speed.value_share) * 8192 + 4e-8 * 2 * 8192
    assert viewing[:3] == plain[:3]
    assert viewing[3:] == pytest.approx([s + extra for s in plain[3:]])


def test_kv_complete_is_refused_with_flash_attention():
    model = tiny_model("llama", attn="flash_attention_2")
    with pytest.raises(spts.UnsupportedModelError, match="kv_complete needs an attention mask"):
        spts.enable(model, SMALL.with_(kv_complete=True))


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_skipped_prefills_like_the_paper_and_caches_every_candidate(family, attn):
    """The prefill is the paper's (same logits, same active tokens); the cache holds every candidate, and in the
    first skipping layer (every token a candidate, its input the full model's) exactly the full model's K/V."""
    model = tiny_model(family, attn)
    ids = _ids(model)
    full = model(ids, use_cache=True)
    with spts.enabled(model, SMALL):
        paper = model(ids, use_cache=True)
        paper_stats = spts.last_stats(model)
    with spts.enabled(model, SMALL.with_(cache_skipped=True)):
        out = model(ids, use_cache=True)
        stats = spts.last_stats(model)
    torch.testing.assert_close(out.logits, paper.logits, rtol=0, atol=1e-5)
    assert [s.attention_active for s in stats.layers] == [s.attention_active for s in paper_stats.layers]
    candidates = [layer.candidates for layer in stats.layers]
    assert spts.cache_tokens_per_layer(output_cache(out)) == candidates == [PROMPT, PROMPT, PROMPT, 15, 15, 9]
    assert spts.cache_tokens_per_layer(output_cache(paper)) == [PROMPT, 24, 24, 12, 12, 6]
    for ours, reference in zip(_layer_kv(output_cache(out), 1), _layer_kv(output_cache(full), 1), strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # The active tokens' entries are the paper's; decoding then sees more than the paper's cache.
    active = stats.kv_positions[1]
    assert torch.equal(active[0], torch.arange(PROMPT))
    paper_keys = _layer_kv(output_cache(paper), 1)[0]
    kept = paper_stats.kv_positions[1][0]
    torch.testing.assert_close(_layer_kv(output_cache(out), 1)[0][:, :, kept], paper_keys, rtol=0, atol=1e-5)


def _layer_kv(cache, layer_idx):
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def test_cache_skipped_with_kv_complete_is_refused():
    with pytest.raises(ValueError, match="kv_complete already caches every candidate"):
        SMALL.with_(kv_complete=True, cache_skipped=True)


def _dense_window_attention(queries, keys, values, window, sinks, scaling):
    """Reference: every query over the keys in (i - window, i] and the first ``sinks``, by a dense masked softmax."""
    n = queries.shape[2]
    groups = queries.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = (j <= i) & ((j > i - window) | (j < sinks))
    scores = (queries @ keys.transpose(-1, -2) * scaling).masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ values).transpose(1, 2)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize(("n", "window", "sinks"), [(37, 8, 2), (40, 8, 0), (9, 4, 20), (12, 12, 3), (7, 30, 1)])
def test_local_attention_matches_a_dense_masked_reference(n, window, sinks, attn):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from spts.runtime.local_attention import local_attention

    module = tiny_model("llama", attn).model.layers[0].self_attn  # carries what the attention functions read
    function = ALL_ATTENTION_FUNCTIONS.get_interface(attn, eager_attention_forward)
    generator = torch.Generator().manual_seed(n + window)
    queries = torch.randn(2, 4, n, 16, generator=generator)
    keys, values = torch.randn(2, 2, n, 16, generator=generator), torch.randn(2, 2, n, 16, generator=generator)
    ours = local_attention(function, module, queries, keys, values, window, sinks, 0.25)
    reference = _dense_window_attention(queries, keys, values, window, sinks, 0.25)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_local_window_updates_the_skipped_candidates_by_their_window(family, attn):
    """In the first skipping layer every token is a candidate and its input is the full model's. Without
    local_window the skipped candidates keep their input; with a window spanning the prompt they get exactly the
    unmodified layer's attention update (and no FFN); a short window gives them another update. The active
    tokens compute what they compute without it."""
    model = tiny_model(family, attn)
    config = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(16, 8), delta=4)
    ids = _ids(model)
    layer = model.model.layers[1]
    seen: dict = {}
    # The unmodified layer's residual after attention is what its post-attention norm reads.
    handle = layer.post_attention_layernorm.register_forward_hook(lambda m, args, out: seen.update(full=args[0][0]))
    model(ids)
    handle.remove()

    for window in (0, 4, PROMPT):
        with spts.enabled(model, config.with_(local_window=window)):
            _, (hidden, _, output) = _record_layer(layer, lambda: model(ids, use_cache=True))
            seen[window] = (hidden[0], output[0])
            active = spts.last_stats(model).kv_positions[1][0]
            assert len(active) == 16
    skipped = torch.ones(PROMPT, dtype=torch.bool)
    skipped[active] = False
    layer_input, paper = seen[0]
    torch.testing.assert_close(paper[skipped], layer_input[skipped], rtol=0, atol=0)
    torch.testing.assert_close(seen[PROMPT][1][skipped], seen["full"][skipped], rtol=0, atol=1e-5)
    assert not torch.allclose(seen[4][1][skipped], seen["full"][skipped], atol=1e-3)
    for window in (4, PROMPT):
        torch.testing.assert_close(seen[window][1][active], paper[active], rtol=0, atol=1e-5)


def test_local_window_is_refused_with_flash_attention():
    model = tiny_model("llama", attn="flash_attention_2")
    with pytest.raises(spts.UnsupportedModelError, match="local_window needs an attention mask"):
        spts.enable(model, SMALL.with_(local_window=16))
