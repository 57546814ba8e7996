"""With small budgets: what each layer keeps, caches and computes, checked against transformers' own parts."""

from __future__ import annotations

import pytest
import torch

import spts
from conftest import FAMILIES, family_module, tiny_model
from spts import SPTSConfig
from spts.runtime.transformers_api import model_cache_argument, output_cache

SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)
PROMPT = 48


def _prompt(model, batch=1, seed=0, length=PROMPT):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


def _record_layer_inputs(model):
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs, idx=idx: inputs.__setitem__(idx, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
        for idx, layer in enumerate(model.model.layers)
    ]
    return inputs, handles


def _reference_keys_values(model, layer_idx, hidden, positions):
    """Keys/values transformers' own modules give for ``hidden`` rows at original ``positions``."""
    layer = model.model.layers[layer_idx]
    attn = layer.self_attn
    rows = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    normed = layer.input_layernorm(rows)
    shape = (*rows.shape[:2], -1, attn.head_dim)
    keys = attn.k_proj(normed).view(shape)
    if hasattr(attn, "k_norm"):
        keys = attn.k_norm(keys)
    keys = keys.transpose(1, 2)
    values = attn.v_proj(normed).view(shape).transpose(1, 2)
    cos, sin = model.model.rotary_emb(rows, positions)
    keys, _ = family_module(model).apply_rotary_pos_emb(keys, keys, cos, sin)
    return keys, values


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_holds_exactly_the_kept_tokens(family):
    model = tiny_model(family)
    ids = _prompt(model, batch=2)
    inputs, handles = _record_layer_inputs(model)
    with spts.enabled(model, SMALL):
        out = model(ids, use_cache=True)
        stats = spts.last_stats(model)
    for handle in handles:
        handle.remove()
    expected_counts = [PROMPT, 24, 24, 12, 12, 6]
    assert [layer.kv_tokens for layer in stats.layers] == expected_counts
    assert spts.cache_tokens_per_layer(output_cache(out)) == expected_counts
    for layer_idx in range(SMALL.start_layer, 6):
        positions = stats.kv_positions[layer_idx]
        keys, values = _reference_keys_values(model, layer_idx, inputs[layer_idx], positions)
        cached = output_cache(out).layers[layer_idx]
        torch.testing.assert_close(cached.keys, keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached.values, values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_always_active_and_pruned_tokens_never_return(family):
    model = tiny_model(family)
    with spts.enabled(model, SMALL):
        model(_prompt(model, batch=3, seed=4))
        stats = spts.last_stats(model)
    assert stats.candidates_per_stage == {0: PROMPT, 1: 15, 2: 9}
    previous = None
    for layer_idx in range(SMALL.start_layer, 6):
        kept = stats.kv_positions[layer_idx]
        candidates = stats.candidates[layer_idx]
        assert (kept[:, -1] == PROMPT - 1).all(), "the last token must be active in every layer"
        assert (kept.diff(dim=1) > 0).all(), "kept tokens stay in causal order, without repeats"
        for row in range(kept.shape[0]):
            assert set(kept[row].tolist()) <= set(candidates[row].tolist())
            if previous is not None:
                assert set(candidates[row].tolist()) <= set(previous[row].tolist()), "a pruned token came back"
        previous = candidates


def test_skipped_tokens_ride_the_residual_unchanged():
    model = tiny_model("llama")
    ids = _prompt(model)
    inputs, handles = _record_layer_inputs(model)
    with spts.enabled(model, SMALL):
        model(ids)
        stats = spts.last_stats(model)
    for handle in handles:
        handle.remove()
    for layer_idx in range(SMALL.start_layer, 5):
        kept = set(stats.kv_positions[layer_idx][0].tolist())
        skipped = [p for p in range(PROMPT) if p not in kept]
        before, after = inputs[layer_idx][0], inputs[layer_idx + 1][0]
        assert torch.equal(before[skipped], after[skipped])
        assert not torch.equal(before[sorted(kept)], after[sorted(kept)])


def test_each_batch_row_selects_its_own_tokens_like_a_single_prompt():
    model = tiny_model("qwen3")
    ids = torch.cat([_prompt(model, seed=5), _prompt(model, seed=6)])
    with spts.enabled(model, SMALL):
        batched = model(ids).logits
        batched_kept = spts.last_stats(model).kv_positions
        for row in range(2):
            single = model(ids[row : row + 1]).logits
            torch.testing.assert_close(batched[row : row + 1, -1], single[:, -1], rtol=1e-4, atol=1e-5)
            assert torch.equal(spts.last_stats(model).kv_positions[5][0], batched_kept[5][row])
    assert not torch.equal(batched_kept[5][0], batched_kept[5][1])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_decode_step_attention_matches_naive_reference(family, attn):
    model = tiny_model(family, attn)
    ids = _prompt(model, seed=7)
    layer_idx = 4
    attn_module = model.model.layers[layer_idx].self_attn
    seen = {}
    handles = [
        attn_module.register_forward_pre_hook(
            lambda m, a, kw: seen.__setitem__("hidden", kw["hidden_states"]), with_kwargs=True
        ),
        attn_module.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out[0])),
    ]
    with spts.enabled(model, SMALL):
        prefill = model(ids, use_cache=True)
        cache = output_cache(prefill)
        next_token = prefill.logits[:, -1:].argmax(-1)
        model(next_token, use_cache=True, **{model_cache_argument(model): cache})
    for handle in handles:
        handle.remove()

    layer = cache.layers[layer_idx]
    assert layer.keys.shape[2] == 12 + 1  # the layer's kept tokens plus the decoded one
    hidden = seen["hidden"]  # already normed by input_layernorm
    shape = (1, 1, -1, attn_module.head_dim)
    query = attn_module.q_proj(hidden).view(shape)
    if hasattr(attn_module, "q_norm"):
        query = attn_module.q_norm(query)
    query = query.transpose(1, 2)
    cos, sin = model.model.rotary_emb(hidden, torch.tensor([[PROMPT]]))  # position continues after the prompt
    query, _ = family_module(model).apply_rotary_pos_emb(query, query, cos, sin)
    group = query.shape[1] // layer.keys.shape[1]
    keys = layer.keys.repeat_interleave(group, dim=1)
    values = layer.values.repeat_interleave(group, dim=1)
    weights = torch.softmax(query @ keys.transpose(-1, -2) / attn_module.head_dim**0.5, dim=-1)
    expected = attn_module.o_proj((weights @ values).transpose(1, 2).reshape(1, 1, -1))
    torch.testing.assert_close(seen["out"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_greedy_and_sampling_on_compressed_cache(family):
    model = tiny_model(family)
    ids = _prompt(model, seed=8)
    with spts.enabled(model, SMALL):
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
        # A hand-written decode loop over the same compressed cache gives the same tokens.
        out = model(ids, use_cache=True)
        cache, tokens = output_cache(out), [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(5):
            tokens.append(
                model(tokens[-1], use_cache=True, **{model_cache_argument(model): cache})
                .logits[:, -1]
                .argmax(-1, keepdim=True)
            )
        torch.manual_seed(0)
        sampled = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=20, pad_token_id=0)
    assert torch.equal(greedy.sequences[:, PROMPT:], torch.cat(tokens, dim=1))
    # generate's cache: every layer holds what the prefill kept plus the 5 fed-back tokens.
    assert spts.cache_tokens_per_layer(output_cache(greedy)) == [PROMPT + 5, 29, 29, 17, 17, 11]
    assert sampled.shape == (1, PROMPT + 6)


def test_prefix_cache_then_more_tokens_appends_densely():
    logits = {}
    for attn in ("sdpa", "eager"):
        model = tiny_model("llama", attn)
        ids = _prompt(model, seed=9)
        with spts.enabled(model, SMALL):
            cache = output_cache(model(ids[:, :40], use_cache=True))
            logits[attn] = model(ids[:, 40:], use_cache=True, **{model_cache_argument(model): cache}).logits
        assert spts.cache_tokens_per_layer(cache) == [PROMPT, 24 + 8, 24 + 8, 12 + 8, 12 + 8, 6 + 8]
    # Eager gets an explicit mask, sliced per layer to that layer's cache; SDPA gets its own mask.
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-5)


def test_layers_from_end_layer_run_in_full_over_every_token():
    config = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(24, 12), delta=3, end_layer=5)
    model = tiny_model("llama")
    with spts.enabled(model, config):
        # Only the skipping layers are patched; layer 5 runs transformers' own forward.
        assert ["forward" in layer.__dict__ for layer in model.model.layers] == [False] + [True] * 4 + [False]
        out = model(_prompt(model), use_cache=True)
        stats = spts.last_stats(model)
    assert [layer.stage for layer in stats.layers] == [None, 0, 0, 1, 1, None]
    assert spts.cache_tokens_per_layer(output_cache(out)) == [PROMPT, 24, 24, 12, 12, PROMPT]
