"""Block-sparse prefill attention (SPTSConfig.sparse_*): what the block selection guarantees, the kernels against
dense attention, exactness at threshold 1 against the unmodified transformers model, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import spts
from conftest import ATTENTION, FAMILIES, tiny_model
from spts import SPTSConfig
from spts.errors import UnsupportedModelError
from spts.eval.prefix import replays
from spts.methods.specs import resolve_method
from spts.policies.sparse import (
    LOCAL_BLOCKS,
    antidiagonal_block_mass,
    density,
    kept_blocks,
    kept_counts,
    rank_blocks,
    round_up_counts,
)
from spts.runtime.sparse_attention import SPARSE_ATTENTION
from spts.runtime.sparse_kernels import flex_block_attention, gathered_attention
from spts.runtime.transformers_api import output_cache

LENGTH = 200  # 25 blocks of 8 tokens: enough for the sparse path (runtime.sparse_attention.MIN_BLOCKS)
SPARSE = dict(sparse_from=0, sparse_block=8)
FORCED = dict(SPARSE, sparse_max_density=1.0)  # never fall back to dense attention: the kernel always runs


def _ids(batch: int = 1, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def _masses(seed: int, shape=(2, 3, 17, 17)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) ** 4 * 10  # skewed, as attention is


# ------------------------------------------------------------------------------------------ block selection
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.01, 0.5, 0.9, 0.99])
def test_selection_keeps_sink_and_local_band_and_is_causal(seed, threshold):
    mass = _masses(seed)
    order = rank_blocks(mass)
    counts = kept_counts(mass, order, threshold, 0.0)
    kept = kept_blocks(order, counts)
    blocks = mass.shape[-1]
    index = torch.arange(blocks)
    offset = index[:, None] - index[None, :]
    assert not kept[..., offset < 0].any(), "a block in the future of its query block was kept"
    assert kept[..., :, 0].all(), "the sink block was dropped"
    assert kept[..., (offset >= 0) & (offset < LOCAL_BLOCKS)].all(), "a block of the local band was dropped"
    assert 0 < density(counts) <= 1
    # The kept blocks hold at least the threshold's share of each row's estimated mass.
    causal_mass = mass.masked_fill(offset < 0, 0)
    held = (causal_mass * kept).sum(-1)
    assert (held >= threshold * causal_mass.sum(-1) - 1e-4).all()


@pytest.mark.parametrize("seed", range(5))
def test_selection_is_monotone_in_the_threshold(seed):
    mass = _masses(seed)
    order = rank_blocks(mass)
    previous = None
    for threshold in [0.05, 0.3, 0.6, 0.8, 0.9, 0.95, 0.999, 1.0]:
        counts = round_up_counts(kept_counts(mass, order, threshold, 0.0))
        kept = kept_blocks(order, counts)
        if previous is not None:
            assert not (previous & ~kept).any(), f"raising the threshold to {threshold} dropped a kept block"
        previous = kept
    causal = torch.ones(mass.shape[-1], mass.shape[-1], dtype=torch.bool).tril()
    assert torch.equal(previous, causal.expand_as(previous)), "threshold 1 must keep every causal block"


def test_minimum_density_and_rounding_only_add_blocks():
    mass = _masses(0)
    order = rank_blocks(mass)
    counts = kept_counts(mass, order, 0.1, 0.0)
    with_minimum = kept_counts(mass, order, 0.1, 0.5)
    causal = torch.arange(1, mass.shape[-1] + 1)
    assert (with_minimum >= torch.ceil(0.5 * causal)).all()
    assert (with_minimum >= counts).all() and (with_minimum <= causal).all()
    rounded = round_up_counts(counts)
    assert (rounded >= counts).all() and (rounded <= causal).all()
    assert len(torch.unique(rounded)) <= len(torch.unique(counts))


def test_antidiagonal_estimate_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(1, 4, 64, 8, generator=generator), torch.randn(1, 2, 64, 8, generator=generator)
    block, stride, scaling = 16, 4, 8**-0.5
    mass = antidiagonal_block_mass(query, key, block, scaling, stride)
    # By hand: the mean logit along each stride x stride tile's antidiagonal, softmax over the causal tiles of a
    # reduced row, summed per block and over the group's two query heads.
    logits = torch.einsum("bhqd,bhkd->bhqk", query, key.repeat_interleave(2, 1)) * scaling
    n = 64 // stride
    tiles = torch.zeros(1, 4, n, n)
    for i in range(n):
        for j in range(n):
            antidiagonal = [logits[..., i * stride + stride - 1 - s, j * stride + s] for s in range(stride)]
            tiles[..., i, j] = sum(antidiagonal) / stride
    tiles = tiles.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    per = block // stride
    expected = tiles.view(1, 2, 2, 4, per, 4, per).sum(dim=(2, 4, 6))
    torch.testing.assert_close(mass, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("kernel", [gathered_attention, flex_block_attention], ids=["gather", "flex"])
@pytest.mark.parametrize("threshold", [0.3, 0.8, 1.0])
def test_kernels_equal_dense_attention_over_the_kept_blocks(kernel, threshold):
    generator = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, length, dim, block = 2, 6, 2, 203, 16, 16  # a partial last block
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
    mass = antidiagonal_block_mass(query, key, block, dim**-0.5)
    order = rank_blocks(mass)
    counts = round_up_counts(kept_counts(mass, order, threshold, 0.0))
    out = kernel(query, key, value, order, counts, block, dim**-0.5)
    kept = kept_blocks(order, counts).repeat_interleave(block, -2).repeat_interleave(block, -1)
    visible = kept[..., :length, :length] & torch.ones(length, length, dtype=torch.bool).tril()
    group = heads // kv_heads
    reference = F.scaled_dot_product_attention(
        query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1),
        attn_mask=visible.repeat_interleave(group, 1), scale=dim**-0.5,
    ).transpose(1, 2)  # fmt: skip
    assert out.shape == (batch, length, heads, dim)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    if threshold < 1.0:
        assert density(counts) < 1.0


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_threshold_one_matches_unmodified_model(family, attn, per_head):
    model = tiny_model(family, attn)
    ids = _ids()
    reference = model(ids, use_cache=True)
    reference_tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    schedule = SPTSConfig(
        start_layer=3, stage_boundaries=(), budgets=(4096,), sparse_threshold=1.0, sparse_per_head=per_head
    )
    # Default density limit: every block kept means the model's own attention runs (exactly the same numbers).
    with spts.enabled(model, schedule.with_(**SPARSE)):
        out = model(ids, use_cache=True)
        stats = spts.last_stats(model)
        assert sorted(stats.sparse) == [0, 1, 2] and all(s.dense_fallback for s in stats.sparse.values())
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=1e-5)
    # The kernel forced to run over every block, in the full layers and the skipping ones alike.
    with spts.enabled(model, schedule.with_(**FORCED, sparse_to=6)):
        out = model(ids, use_cache=True)
        stats = spts.last_stats(model)
        assert sorted(stats.sparse) == list(range(6)) and not any(s.dense_fallback for s in stats.sparse.values())
        assert stats.to_dict()["sparse_density_per_layer"] == {i: 1.0 for i in range(6)}
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=2e-5)
    for layer_ref, layer_out in zip(output_cache(reference).layers, output_cache(out).layers, strict=True):
        torch.testing.assert_close(layer_out.keys, layer_ref.keys, rtol=0, atol=1e-5)
    assert torch.equal(tokens, reference_tokens)


@pytest.mark.parametrize("spec", ["sparse1.0", "spts+sparse1.0:L0-6", "spts@0.5+sparse1.0:L1"])
def test_threshold_one_methods_match_their_dense_counterpart(spec):
    model = tiny_model("qwen2")
    ids = _ids(batch=2)
    base = SPTSConfig(start_layer=3, stage_boundaries=(4,), budgets=(0.6, 0.4))
    method = resolve_method(spec, base, model)
    dense = None if spec.startswith("sparse") else method.config.with_(sparse_from=None, sparse_to=None)
    with spts.enabled(model, dense) if dense else torch.no_grad():
        reference = model(ids).logits
    with spts.enabled(model, method.config.with_(sparse_block=8, sparse_max_density=1.0)):
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=2e-5)
        assert spts.last_stats(model).sparse


def test_sparse_attention_below_threshold_changes_only_what_it_should():
    model = tiny_model("llama")
    ids = _ids(length=300)
    with spts.enabled(model, SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(4096,), **FORCED)) as m:
        sparse = m(ids).logits
        stats = spts.last_stats(m)
    assert all(s.density < 1.0 for s in stats.sparse.values())
    assert not torch.allclose(sparse, model(ids).logits, atol=1e-4)
    summary = stats.to_dict()
    assert set(summary["sparse_density_per_layer"]) == {0, 1, 2}
    assert 0 <= summary["sparse_estimate_time_share"] < 1


def test_short_prompts_and_decoding_use_the_models_own_attention():
    model = tiny_model("llama")
    config = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(4096,), **FORCED)
    short = _ids(length=120)  # 15 blocks: below MIN_BLOCKS, no estimate
    with spts.enabled(model, config):
        torch.testing.assert_close(model(short).logits, spts.disable(model)(short).logits, rtol=0, atol=1e-5)
    with spts.enabled(model, config):
        model(short)
        assert spts.last_stats(model).sparse == {}
        assert "sparse_density_per_layer" not in spts.last_stats(model).to_dict()


# ------------------------------------------------------------------------------------------ per instance
def test_patches_are_per_instance_and_restored():
    model, other = tiny_model("llama"), tiny_model("llama")
    ids = _ids()
    before = other(ids).logits
    config = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(4096,), sparse_threshold=0.3, **FORCED)
    with spts.enabled(model, config):
        model(ids)
        attention = model.model.layers[0].self_attn
        assert attention.config is model.config, "the config view must only last for the prefill"
        assert other.model.layers[0].self_attn.config._attn_implementation == "sdpa"
        torch.testing.assert_close(other(ids).logits, before, rtol=0, atol=0)
    assert all(layer.self_attn.config is model.config for layer in model.model.layers)
    assert not any(k.startswith("_spts") for layer in model.model.layers for k in layer.self_attn.__dict__)


def test_error_if_a_model_names_the_sparse_attention_itself():
    model = tiny_model("llama")
    model.config._attn_implementation = SPARSE_ATTENTION
    with pytest.raises(UnsupportedModelError, match=r"spts\.enable"):
        model(_ids(length=20))


# ------------------------------------------------------------------------------------------ refusals
def test_sparse_config_values_are_checked():
    base = dict(start_layer=3, stage_boundaries=(), budgets=(0.5,))
    for bad in (
        dict(sparse_from=-1),
        dict(sparse_from=3),  # nothing below the start layer, and no sparse_to
        dict(sparse_from=2, sparse_to=2),
        dict(sparse_from=0, sparse_block=12),
        dict(sparse_threshold=0.0),
        dict(sparse_threshold=1.5),
        dict(sparse_min_density=-0.1),
        dict(sparse_max_density=0.0),
        dict(sparse_from=0, sparse_to=5, kv_complete=True),
        dict(sparse_from=0, sparse_to=5, local_window=16),
    ):
        with pytest.raises(ValueError):
            SPTSConfig(**base, **bad)
    with pytest.raises(ValueError, match="sparse_to"):
        spts.enable(tiny_model("llama"), SPTSConfig(**base, sparse_from=0, sparse_to=7))


def test_sliding_window_layers_are_refused():
    model = tiny_model("mistral")
    model.config.sliding_window = 16
    config = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(4096,), end_layer=4, **SPARSE)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        spts.enable(model, config)


def test_prefix_replay_is_refused_for_sparse_full_layers():
    base = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.5,))
    model = tiny_model("llama")
    assert replays(resolve_method("spts", base))
    assert not replays(resolve_method("spts+sparse0.9", base))
    assert not replays(resolve_method("sparse0.9", base, model))
    assert replays(resolve_method("spts+sparse0.9:L3-6", base))  # only skipping layers: the prefix is the model's
    assert base.with_(sparse_from=1).exact_prefix() == 1


def test_tuner_replays_only_the_exact_prefix():
    from spts.tuning.objective import reference_run, score_config

    model = tiny_model("llama")
    ids = _ids(length=200)
    tokenizer = type("Plain", (), {"eos_token_id": None, "decode": lambda self, ids, **_: str(ids)})()
    reference = reference_run(model, tokenizer, "p", ids, depth=3, answer_tokens=4)
    config = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.5,), sparse_threshold=0.3, **FORCED)
    replayed = score_config(model, reference, config)
    computed = score_config(model, reference, config, replay=False)
    assert replayed.logprobs == pytest.approx(computed.logprobs, abs=1e-4)


def test_density_helper():
    counts = torch.tensor([[[1, 2, 3, 4]]])
    assert density(counts) == 1.0
    assert density(torch.tensor([[[1, 1, 1, 1]]])) == pytest.approx(4 / 10)
    assert math.isclose(density(torch.tensor([[[1, 2, 2, 2]]])), 7 / 10)


# ------------------------------------------------------------------------------------------ tuner
def test_speed_model_predicts_sparse_layers_from_their_density():
    from spts.tuning.speed import SpeedModel

    speed = SpeedModel(
        num_layers=6,
        coefficients={"attention": (0.0, 4e-6, 4e-8), "ffn": (0.0, 6e-6), "probe": (0.0, 1e-7), "move": (0.0, 1e-8),
                      "dense_core": (0.0, 0.0, 3e-8), "sparse_kernel": (0.0, 0.0, 5e-8),
                      "sparse_estimate": (0.0, 0.0, 2e-9)},
    )  # fmt: skip
    schedule = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.5,))
    sparse = schedule.with_(sparse_from=0, sparse_max_density=0.5)
    plain = speed.speedup(schedule, 8192)
    assert speed.speedup(sparse, 8192) == plain, "without measured densities a sparse layer is predicted dense"
    sparse_dense = {0: 0.2, 1: 0.2, 2: 0.2}
    faster = speed.speedup(sparse, 8192, densities=sparse_dense)
    slower = speed.speedup(sparse, 8192, densities={0: 0.9, 1: 0.9, 2: 0.9})  # falls back: pays the estimate
    assert slower < plain < faster
    seconds = speed.layer_seconds(sparse, 8192, densities=sparse_dense)
    dense_seconds = speed.layer_seconds(schedule, 8192)
    saved = dense_seconds[0] - seconds[0]
    assert saved == pytest.approx((3e-8 - 0.2 * 5e-8 - 2e-9) * 8192**2)
    assert seconds[3:] == dense_seconds[3:]


def test_tune_searches_sparse_attention_as_a_dimension(tmp_path):
    from spts.tuning import tune
    from test_tune import SPEED, TASKS
    from test_zoo_haystack import _tiny_tokenizer

    tokenizer = _tiny_tokenizer(chat=True)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    speed = SPEED.__class__(
        num_layers=6,
        coefficients={**SPEED.coefficients, "dense_core": (0.0, 0.0, 3e-8), "sparse_kernel": (0.0, 0.0, 3e-8),
                      "sparse_estimate": (0.0, 0.0, 1e-10)},
    )  # fmt: skip
    result = tune(
        model, tokenizer, tmp_path, speed_model=speed, progress=False, min_fidelity=0.01, prompts=2, length=300,
        tasks=TASKS, max_configs=4, measure=1, measure_repeats=1, seed=0, holdout=(),
        space=["start_layer=3", "end_layer=none", "delta=0.0", "pool_kernel=1", "budgets=0.5", "stage_boundaries=()",
               "sparse_from=none,0", "sparse_block=8", "sparse_max_density=1.0"],
    )  # fmt: skip
    searched = {c["description"]: c["predicted_speedup"] for c in result.summary["configs"]}
    assert len(searched) == 2
    sparse = next(v for k, v in searched.items() if "sparse_from=0" in k)
    dense = next(v for k, v in searched.items() if "sparse_from" not in k)
    densities = result.summary["speed_model"]["sparse_densities"]["(8, 0.9, 0.0, 0, False)"]
    assert sorted(densities) == list(range(6)) and all(0 < d < 1 for d in densities.values())
    assert sparse > dense, "the measured densities must make the sparse config predicted faster"


def test_bench_rows_report_sparse_density(tmp_path):
    from spts.bench import run_bench, write_reports
    from spts.methods import resolve_methods

    model = tiny_model("llama")
    base = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.5,), sparse_block=8, sparse_threshold=0.5)
    methods = resolve_methods("full,spts,spts+sparse0.5", base, model)
    rows = run_bench(model, base, [LENGTH], tmp_path, repeats=1, warmup=0, progress=False, decode=False,
                     methods=methods, prompt=lambda n: _ids(length=n))  # fmt: skip
    by_method = {r.method: r for r in rows}
    assert by_method["spts"].sparse_density is None
    assert 0 < by_method["spts+sparse0.5"].sparse_density <= 1
    assert 0 < by_method["spts+sparse0.5"].estimate_time_share < 1
    write_reports(rows, tmp_path, "tiny")
    assert "sparse density" in (tmp_path / "table.md").read_text()


def test_eval_runs_sparse_methods_in_full_and_records_their_density(tmp_path):
    from spts.eval import PromptRenderer, build_samples, resolve_methods, run_eval
    from test_zoo_haystack import _tiny_tokenizer

    tokenizer = _tiny_tokenizer(chat=True)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    renderer = PromptRenderer(tokenizer)
    samples = build_samples(renderer, "niah_single", [400], n=1)
    base = SPTSConfig(start_layer=3, stage_boundaries=(), budgets=(0.5,), sparse_block=8, sparse_max_density=1.0)
    methods = resolve_methods("full,spts,spts+sparse0.5", base, model)
    rows = run_eval(model, tokenizer, samples, methods, tmp_path, renderer=renderer, progress=False, reuse_prefix=True)
    by_method = {r["method"]: r for r in rows}
    assert "prefix_reused_s" in by_method["spts"] and "prefix_reused_s" not in by_method["spts+sparse0.5"]
    assert 0 < by_method["spts+sparse0.5"]["sparse_density"] < 1 and "sparse_density" not in by_method["spts"]


@pytest.mark.parametrize("kernel", ["gather", "flex"])
def test_either_kernel_runs_in_the_model(kernel, monkeypatch):
    monkeypatch.setenv("SPTS_SPARSE_KERNEL", kernel)
    model = tiny_model("qwen2")
    ids = _ids(length=400)
    reference = model(ids).logits
    schedule = SPTSConfig(
        start_layer=3, stage_boundaries=(), budgets=(4096,), sparse_threshold=1.0, **{**FORCED, "sparse_block": 16}
    )
    with spts.enabled(model, schedule):
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=2e-5)
        assert spts.last_stats(model).sparse
    if kernel == "flex":  # its tiles: blocks of 8 would compute wrong attention, so they are refused
        with spts.enabled(model, schedule.with_(sparse_block=8)), pytest.raises(ValueError, match="multiple of 16"):
            model(ids)
    monkeypatch.setenv("SPTS_SPARSE_KERNEL", "triton")
    with pytest.raises(ValueError, match="SPTS_SPARSE_KERNEL"):
        spts.enable(model, schedule)
