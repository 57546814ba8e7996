"""Left-padded batches: each row gives what its prompt gives alone with SPTS, and the unmodified model's output at
unlimited budget, through generate (greedy and sampling), the model's own step and the static decoder."""

from __future__ import annotations

import pytest
import torch

import spts
from conftest import ATTENTION, FAMILIES, tiny_model
from spts import SPTSConfig
from spts.generation import decode_step, greedy_tokens, prefill_with_cache
from spts.policies import plan_layers
from spts.runtime.decode import StaticDecoder
from spts.runtime.transformers_api import model_cache_argument, output_cache

FRACTIONS = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)
TOKENS = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)
UNLIMITED = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(4096, 4096, 4096), delta=0)
LENGTHS = (130, 75, 40)
NEW = 12


def _prompts(lengths=LENGTHS, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    # Token 0 is the pad token: generate would read it inside a prompt as padding.
    return [torch.randint(1, 97, (n,), generator=generator).tolist() for n in lengths]


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt) :] = torch.tensor(prompt)
        mask[b, width - len(prompt) :] = 1
    return ids, mask


def _generate(model, ids, mask=None, **kwargs):
    mask = torch.ones_like(ids) if mask is None else mask
    kwargs = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": 0, **kwargs}
    return model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_logits=True, **kwargs)


def _model(family, attn="sdpa"):
    model = tiny_model(family, attn)
    model.generation_config.eos_token_id = None  # every row gets all its tokens
    return model


@pytest.mark.parametrize(
    ("family", "attn", "config"),
    [(family, attn, FRACTIONS) for family in FAMILIES for attn in ATTENTION]
    + [("llama", "sdpa", TOKENS), ("qwen3", "eager", TOKENS)],
    ids=[f"{family}-{attn}" for family in FAMILIES for attn in ATTENTION] + ["llama-sdpa-tokens", "qwen3-eager-tokens"],
)
def test_each_row_of_a_padded_batch_generates_what_its_prompt_generates_alone(family, attn, config):
    model = _model(family, attn)
    prompts = _prompts()
    ids, mask = _left_padded(prompts)
    with spts.enabled(model, config):
        batch = _generate(model, ids, mask)
        alone = [_generate(model, torch.tensor([p])) for p in prompts]
    for b in range(len(prompts)):
        assert torch.equal(batch.sequences[b, ids.shape[1] :], alone[b].sequences[0, len(prompts[b]) :]), f"row {b}"
        for step in range(NEW):  # every step's logits, so decoding over the padded cache is checked too
            torch.testing.assert_close(batch.logits[step][b], alone[b].logits[step][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_at_unlimited_budget_is_the_unmodified_model(family, attn):
    model = _model(family, attn)
    ids, mask = _left_padded(_prompts(seed=1))
    reference = _generate(model, ids, mask)
    torch.manual_seed(3)
    sampled_reference = _generate(model, ids, mask, do_sample=True, top_k=20).sequences
    reference_logits = model(ids, attention_mask=mask).logits[:, -1]
    with spts.enabled(model, UNLIMITED):
        out = _generate(model, ids, mask)
        torch.manual_seed(3)
        sampled = _generate(model, ids, mask, do_sample=True, top_k=20).sequences
        logits = model(ids, attention_mask=mask).logits[:, -1]
        assert spts.last_stats(model).prompt_lengths == list(LENGTHS)  # the padded path really ran
    assert torch.equal(out.sequences, reference.sequences)
    for step in range(NEW):
        torch.testing.assert_close(out.logits[step], reference.logits[step], rtol=1e-4, atol=1e-4)
    assert torch.equal(sampled, sampled_reference)
    torch.testing.assert_close(logits, reference_logits, rtol=1e-4, atol=1e-4)


def test_the_comparison_with_solo_runs_discriminates():
    """At the real schedules above, SPTS's tokens are not the full model's: equal rows mean equal selections."""
    model = _model("llama")
    ids, mask = _left_padded(_prompts())
    full = _generate(model, ids, mask).sequences
    with spts.enabled(model, FRACTIONS):
        skipped = _generate(model, ids, mask).sequences
    assert not torch.equal(full, skipped)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_keeps_caches_and_counts_what_it_keeps_alone(family):
    model = _model(family)
    prompts = _prompts(seed=2)
    ids, mask = _left_padded(prompts)
    with spts.enabled(model, FRACTIONS):
        _, cache = prefill_with_cache(model, ids, mask)  # positions counted from each row's first token
        stats = spts.last_stats(model)
        alone = []
        for prompt in prompts:
            _, solo_cache = prefill_with_cache(model, torch.tensor([prompt]))
            alone.append((solo_cache, spts.last_stats(model)))
    # Fractions of each row's own length: 75 tokens keep ceil(0.5 * 75) = 38, then ceil(0.25 * 75) = 19.
    assert stats.rows[1].kv_tokens == [75, 75, 38, 38, 19, 19]
    for b, length in enumerate(LENGTHS):
        plans = plan_layers(FRACTIONS, 6, length)
        assert stats.rows[b].kv_tokens == [length, length] + [plans[i].budget for i in range(2, 6)]
    # The batch's cache holds the longest row's counts; shorter rows are left-padded with zeros.
    assert stats.kv_tokens == [max(row.kv_tokens[i] for row in stats.rows) for i in range(6)]
    assert spts.cache_tokens_per_layer(cache) == stats.kv_tokens
    real = sum(sum(r.kv_tokens) for r in stats.rows) / (6 * sum(LENGTHS))
    assert stats.kv_fraction == pytest.approx(real)
    assert [row["prompt_length"] for row in stats.to_dict()["rows"]] == list(LENGTHS)
    for b, (solo_cache, solo_stats) in enumerate(alone):
        assert stats.rows[b].kv_tokens == solo_stats.kv_tokens
        for layer_idx in range(FRACTIONS.start_layer, 6):
            assert torch.equal(stats.rows[b].kv_positions[layer_idx], solo_stats.kv_positions[layer_idx])
            held = cache.layers[layer_idx]
            n = solo_stats.kv_tokens[layer_idx]
            torch.testing.assert_close(held.keys[b, :, -n:], solo_cache.layers[layer_idx].keys[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                held.values[b, :, -n:], solo_cache.layers[layer_idx].values[0], rtol=1e-4, atol=1e-5
            )
            assert not held.keys[b, :, : held.keys.shape[2] - n].any(), "padding slots hold no token"


@pytest.mark.parametrize("attn", ATTENTION)
def test_sampling_decodes_each_row_over_its_own_cache(attn):
    """generate's sampled tokens, fed to the prompt alone, give the logits generate saw for that row at every step."""
    model = _model("qwen3", attn)
    prompts = _prompts(seed=4)
    ids, mask = _left_padded(prompts)
    with spts.enabled(model, FRACTIONS):
        torch.manual_seed(0)
        out = _generate(model, ids, mask, do_sample=True, top_k=20)
        for b, prompt in enumerate(prompts):
            logits, cache = prefill_with_cache(model, torch.tensor([prompt]))
            torch.testing.assert_close(out.logits[0][b], logits[0], rtol=1e-4, atol=1e-4)
            for step in range(1, NEW):
                token = out.sequences[b : b + 1, ids.shape[1] + step - 1 : ids.shape[1] + step]
                forward = model(token, use_cache=True, **{model_cache_argument(model): cache})
                torch.testing.assert_close(out.logits[step][b], forward.logits[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("static_shapes", [False, True], ids=["sliced", "masked"])
@pytest.mark.parametrize("family", FAMILIES)
def test_static_decoder_over_padded_caches_matches_generate(family, static_shapes):
    model = _model(family)
    # 250 tokens + 24 new ones cross the masked form's 256-token chunk.
    ids, mask = _left_padded(_prompts((250, 130, 60), seed=5))
    full = _generate(model, ids, mask, max_new_tokens=24).sequences[:, ids.shape[1] :]
    logits, cache = prefill_with_cache(model, ids, mask)
    decoder = StaticDecoder(model, cache, 24, static_shapes=static_shapes)
    assert torch.equal(_decode(decoder, logits, 24), full)
    # A full cache from the user's own forward (no layout): the mask says where the padding is.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
    own = StaticDecoder(model, output_cache(out), 24, static_shapes=static_shapes, attention_mask=mask)
    assert torch.equal(_decode(own, out.logits[:, -1], 24), full)
    with spts.enabled(model, FRACTIONS):
        reference = _generate(model, ids, mask, max_new_tokens=24).sequences[:, ids.shape[1] :]
        logits, cache = prefill_with_cache(model, ids, mask)
        decoder.load(cache)  # the same batch size and fewer tokens per layer: the buffers are reused
        assert torch.equal(_decode(decoder, logits, 24), reference)
        # A cache that already decoded 4 tokens through the model continues where it stands.
        logits, cache = prefill_with_cache(model, ids, mask)
        step = decode_step(model, cache, 4, fast=False)
        for n in range(4):
            logits = step(reference[:, n : n + 1])
        decoder.load(cache)
        assert torch.equal(_decode(decoder, logits, 20), reference[:, 4:])
        unpadded = torch.tensor(_prompts((120, 120, 120), seed=9))
        logits, cache = prefill_with_cache(model, unpadded)
        decoder.load(cache)  # an unpadded batch after a padded one: nothing stays masked
        assert torch.equal(_decode(decoder, logits, 24), greedy_tokens(model, unpadded, 24, fast=False))
    assert not torch.equal(reference, full)


def _decode(decoder: StaticDecoder, logits: torch.Tensor, n: int) -> torch.Tensor:
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(n - 1):
        tokens.append(decoder.step(tokens[-1]).argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


@pytest.mark.parametrize("attn", ATTENTION)
def test_a_padded_cache_takes_more_tokens_through_the_models_forward(attn):
    """Without generate: the caller's own forward with the padding mask (positions 0..T-1 for every row, as
    transformers numbers them without position ids), then a 3-token chunk and single tokens appended."""
    model = _model("llama", attn)
    ids, mask = _left_padded(_prompts(seed=6))
    chunk = torch.randint(1, 97, (3, 3), generator=torch.Generator().manual_seed(7))

    def run():
        out = model(ids, attention_mask=mask, use_cache=True)
        cache, logits = output_cache(out), [out.logits[:, -1]]
        grown = torch.cat((mask, torch.ones_like(chunk)), dim=1)
        out = model(chunk, attention_mask=grown, use_cache=True, **{model_cache_argument(model): cache})
        logits.append(out.logits)
        for _ in range(3):
            token = out.logits[:, -1:].argmax(-1)
            grown = torch.cat((grown, torch.ones_like(token)), dim=1)
            out = model(token, attention_mask=grown, use_cache=True, **{model_cache_argument(model): cache})
            logits.append(out.logits)
        return logits

    reference = run()
    with spts.enabled(model, UNLIMITED):
        unlimited = run()
    for got, want in zip(unlimited, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "variant",
    [
        {"kv_complete": True},
        {"cache_skipped": True},
        {"local_window": 8, "local_sinks": 2},
        {"full_view_tokens": 3},
        {"accumulate_scores": True, "sink_tokens": 2, "recent_tokens": 4, "pool_kernel": 3, "head_aggregation": "max"},
    ],
    ids=["kv_complete", "cache_skipped", "local_window", "full_view", "acc-sinks-recent-pool-max"],
)
def test_selection_variants_keep_each_row_as_alone(variant):
    model = _model("qwen2", "eager")
    prompts = _prompts(seed=8)
    ids, mask = _left_padded(prompts)
    with spts.enabled(model, FRACTIONS.with_(**variant)):
        batch = _generate(model, ids, mask).sequences[:, ids.shape[1] :]
        for b, prompt in enumerate(prompts):
            assert torch.equal(batch[b], _generate(model, torch.tensor([prompt])).sequences[0, len(prompt) :])
