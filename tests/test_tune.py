"""``spts tune``: search space, prompts, the objective's prefix replay, successive halving, resume, outputs, errors.

Everything runs on a tiny random LLaMA with a word-level tokenizer (see tests/test_eval.py) and a fixed speed
model, so runs are deterministic and fast; the real SmolLM2 end to end through the CLI is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import spts
from conftest import FAMILIES, tiny_model
from spts import SPTSConfig
from spts.cli import app
from spts.eval import PromptRenderer, build_samples
from spts.runtime.replay import replay_prefix
from spts.tuning import TuneError, TuneResumeError, TuneSettings, tune
from spts.tuning import scoring as scoring_module
from spts.tuning.objective import answer_fidelity, reference_run, score_config
from spts.tuning.prompts import TUNE_SEED_OFFSET, file_prompts, generated_prompts
from spts.tuning.search import Aggregate, Target, ranking, rung_sizes, successive_halving
from spts.tuning.space import build_grid, fingerprint, parse_space, subsample
from spts.tuning.speed import SpeedModel, fit_polynomial
from spts.tuning.timing import load_or_measure
from test_zoo_haystack import _tiny_tokenizer

TASKS = ("niah_single", "vt")
# Costs proportional to FLOPs of a layer (attention quadratic): fixed, so that runs do not depend on timing.
SPEED = SpeedModel(
    num_layers=6,
    coefficients={"attention": (0.0, 4e-6, 4e-8), "ffn": (0.0, 6e-6), "probe": (0.0, 1e-7), "move": (0.0, 1e-8)},
)  # fmt: skip
SPACE = ("start_layer=2,3", "delta=0.0", "pool_kernel=1,3")
NO_HOLDOUT = ("none",)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    tokenizer = _tiny_tokenizer(chat=True)
    return tiny_model("llama", vocab_size=len(tokenizer)), tokenizer


def _tune(setup, out, **options):
    model, tokenizer = setup
    kwargs = dict(
        min_fidelity=0.5, prompts=3, length=300, tasks=TASKS, space=SPACE, max_configs=6, measure=0, seed=0,
        holdout=NO_HOLDOUT,
    )  # fmt: skip
    kwargs.update(options)
    return tune(model, tokenizer, out, speed_model=SPEED, progress=False, **kwargs)


class PrefillCounter:
    """Counts the model's forwards over more tokens than an answer has: prefills (full or SPTS)."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 16:
            self.count += 1

    def remove(self):
        self.handle.remove()


# ------------------------------------------------------------------------------------------------------------
# search space, prompts, halving
# ------------------------------------------------------------------------------------------------------------


def test_space_parses_values_and_builds_a_valid_grid():
    space = parse_space(["start_layer=2,3", "budgets=0.5:0.25,0.3", "delta=0,0.05", "pool_kernel=1,2", "prune=false"])
    assert space == {
        "start_layer": (2, 3), "budgets": ((0.5, 0.25), (0.3,)), "delta": (0, 0.05), "pool_kernel": (1, 2),
        "prune": (False,),
    }  # fmt: skip
    grid = build_grid(6, space)
    # pool_kernel=2 is refused by SPTSConfig (even), and so are budgets that do not fit a layout's stages.
    assert grid.invalid > 0 and grid.configs
    assert all(c.pool_kernel == 1 and c.prune is False and c.start_layer in (2, 3) for c in grid.configs)
    assert len({fingerprint(c) for c in grid.configs}) == len(grid.configs)
    default = build_grid(30)
    assert 100 <= len(default.configs) <= 800  # a coarse grid, bounded (spts tune subsamples --max-configs)
    assert {c.start_layer for c in default.configs} == {8, 12, 16, 21}
    # Skipping to the last layer (the paper) or leaving the last sixth in full; stages lie before the tail.
    assert {c.end_layer for c in default.configs} == {None, 25}
    assert all(b < c.end_layer for c in default.configs if c.end_layer for b in c.stage_boundaries)
    tails = [c for c in default.configs if c.end_layer]
    assert len(tails) > 50 and {c.start_layer for c in tails} == {8, 12, 16, 21}
    assert {c.end_layer for c in build_grid(30, parse_space(["end_layer=none"])).configs} == {None}
    # Any SPTSConfig field becomes a dimension without code here.
    extra = build_grid(6, parse_space(["start_layer=2", "probe_tokens=1,2"]))
    assert {c.probe_tokens for c in extra.configs} == {1, 2}


def test_fingerprint_ignores_the_name_and_fields_at_their_defaults():
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25))
    assert fingerprint(config) == fingerprint(config.with_(name="other"))
    assert fingerprint(config) == fingerprint(config.with_(end_layer=None))
    assert fingerprint(config) != fingerprint(config.with_(pool_kernel=3))


def test_subsample_is_seeded_and_keeps_grid_order():
    configs = list(build_grid(30).configs)
    a, b, c = subsample(configs, 20, seed=1), subsample(configs, 20, seed=1), subsample(configs, 20, seed=2)
    assert a == b and a != c and len(a) == 20
    assert [configs.index(x) for x in a] == sorted(configs.index(x) for x in a)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nope=1,2"], "SPTSConfig has no field 'nope'"),
        (["start_layer"], "expected field=value1,value2"),
        (["start_layer="], "give at least one value"),
        (["delta=0", "delta=1"], "given twice"),
    ],
)
def test_space_errors(specs, message):
    with pytest.raises(ValueError, match=message):
        parse_space(specs)


def test_rungs_halve_configs_and_double_prompts():
    assert rung_sizes(8) == [1, 2, 4, 8] and rung_sizes(5) == [1, 2, 3, 5] and rung_sizes(1) == [1]
    seen = []

    def evaluate(fps, upto):
        seen.append((len(fps), upto))
        return {fp: Aggregate(fp, upto, fidelity=int(fp) / 20, first_token=1, token_agreement=1, logprob_gap=0)
                for fp in fps}  # fmt: skip

    fps = [f"{i:02d}" for i in range(20)]
    rungs = successive_halving(fps, 8, evaluate, ranking(Target("speedup", 1.0), dict.fromkeys(fps, 2.0)))
    assert seen == [(20, 1), (10, 2), (5, 4), (4, 8)]
    assert rungs[-1].fingerprints[0] == "19"
    # Fidelity target: passing configs fastest first; the most faithful one is always kept as a fallback.
    speed = {fp: 3.0 - int(fp) / 10 for fp in fps}
    rungs = successive_halving(fps, 4, evaluate, ranking(Target("fidelity", 0.5), speed), 1, True)
    assert rungs[-1].fingerprints[0] == "10"  # the fastest with fidelity >= 0.5
    assert "19" in rungs[-1].fingerprints


def test_calibration_prompts_are_disjoint_from_eval_and_files_work(setup, tmp_path):
    _, tokenizer = setup
    renderer = PromptRenderer(tokenizer)
    prompts = generated_prompts(renderer, 4, 300, seed=0, tasks=TASKS)
    assert [p.source for p in prompts] == ["niah_single", "vt", "niah_single", "vt"]
    assert prompts[0].prompt_id == f"niah_single/300/0/seed{TUNE_SEED_OFFSET}"
    assert generated_prompts(renderer, 2, 300, seed=0, tasks=TASKS)[1].prompt_id == prompts[1].prompt_id
    evaluated = build_samples(renderer, list(TASKS), [300], n=2, seed=0)
    eval_ids = {tuple(renderer.input_ids(s)[0].tolist()) for s in evaluated}
    assert not eval_ids & {tuple(p.input_ids[0].tolist()) for p in prompts}
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "the sky is blue"}\n\n{"prompt": "where is the needle"}\n')
    from_file = file_prompts(renderer, path, 5)
    assert len(from_file) == 2 and from_file[0].prompt_id.startswith("file/0/")
    text, special = renderer.text("the sky is blue")
    assert from_file[0].input_ids[0].tolist() == tokenizer(text, add_special_tokens=special)["input_ids"]


# ------------------------------------------------------------------------------------------------------------
# objective: prefix replay
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_replayed_prefill_is_exact_and_computes_no_prefix_layer(setup, family):
    _, tokenizer = setup
    model = tiny_model(family, vocab_size=len(tokenizer))
    ids = torch.randint(2, len(tokenizer), (1, 200), generator=torch.Generator().manual_seed(0))
    config = SPTSConfig(start_layer=3, stage_boundaries=(4,), budgets=(0.4, 0.2), delta=0.05, pool_kernel=3)
    reference = reference_run(model, tokenizer, "p", ids, depth=3)
    assert 1 <= len(reference.answer_ids) <= 16 and reference.depth == 3
    calls = []
    handles = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in
               enumerate(model.model.layers)]  # fmt: skip
    try:
        with torch.inference_mode(), spts.enabled(model, config):
            normal = model(ids, use_cache=True)
            normal_calls, calls[:] = list(calls), []
            with replay_prefix(model, reference.prefix, config.start_layer):
                replayed = model(ids, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    assert normal_calls == [0, 1, 2, 3, 4, 5]
    assert calls == [3, 4, 5]  # layers 0-2 replayed, not computed
    torch.testing.assert_close(replayed.logits[:, -1], normal.logits[:, -1], rtol=0, atol=1e-5)
    for a, b in zip(normal.cache.layers, replayed.cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-5)
    assert "forward" not in model.model.layers[0].__dict__  # restored
    # Scores agree with and without replay; at full budget the config reproduces the full answer.
    assert score_config(model, reference, config) == score_config(model, reference, config, replay=False)
    whole = score_config(model, reference, config.with_(budgets=(1.0,), stage_boundaries=()))
    assert all(whole.matches) and whole.fidelity == 1.0
    assert max(abs(a - b) for a, b in zip(whole.logprobs, reference.full_logprobs, strict=True)) < 1e-4


def test_answer_fidelity_weighs_the_first_token_half():
    assert answer_fidelity([True]) == 1.0 and answer_fidelity([False]) == 0.0
    assert answer_fidelity([True, False, False]) == 0.5
    assert answer_fidelity([False, True, True, True, True]) == 0.5
    assert answer_fidelity([True, True, False]) == 0.75


def test_search_computes_no_layer_below_a_configs_start(setup, tmp_path, monkeypatch):
    model, _ = setup
    current: dict[str, int] = {}
    full_length, violations = [0] * 6, []

    def hook(module, args, output, layer):
        tokens = args[0].shape[1]
        if tokens > 16:
            start = current.get("start")
            if start is None:
                full_length[layer] += 1  # a reference run: the full model, once per prompt
            elif layer < start:
                violations.append((layer, start))

    def scoring(model, reference, config, proxies=None, **task):
        current["start"] = config.start_layer
        try:
            return score_config(model, reference, config, proxies, **task)
        finally:
            current.clear()

    monkeypatch.setattr(scoring_module, "score_config", scoring)
    handles = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i, layer in
               enumerate(model.model.layers)]  # fmt: skip
    try:
        result = _tune(setup, tmp_path)
    finally:
        for handle in handles:
            handle.remove()
    trials = [r for r in _rows(tmp_path) if r["kind"] == "trial"]
    assert len(trials) > 3 * 3
    assert not violations
    assert full_length[0] == 3  # layer 0 ran over the prompt once per prompt, whatever the number of trials
    assert result.summary["rungs"] == [{"prompts": 1, "configs": 6}, {"prompts": 2, "configs": 4},
                                       {"prompts": 3, "configs": 4}]  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# whole runs
# ------------------------------------------------------------------------------------------------------------


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def test_deterministic_for_a_seed(setup, tmp_path):
    first = _tune(setup, tmp_path / "a", target_speedup=1.2, min_fidelity=None)
    second = _tune(setup, tmp_path / "b", target_speedup=1.2, min_fidelity=None)
    assert (tmp_path / "a" / "trials.jsonl").read_text() == (tmp_path / "b" / "trials.jsonl").read_text()
    assert first.config == second.config and first.fidelity == second.fidelity
    assert first.predicted_speedup >= 1.2
    other_seed = _tune(setup, tmp_path / "c", target_speedup=1.2, min_fidelity=None, seed=1)
    assert {r["prompt_id"] for r in _rows(tmp_path / "c")} != {r["prompt_id"] for r in _rows(tmp_path / "a")}
    assert other_seed.predicted_speedup >= 1.2


def test_resume_recomputes_nothing_finished(setup, tmp_path):
    model, _ = setup
    first = _tune(setup, tmp_path)
    rows = (tmp_path / "trials.jsonl").read_text().splitlines()
    counter = PrefillCounter(model)
    try:
        again = _tune(setup, tmp_path)
        assert counter.count == 0
        # An interruption while writing the last trial leaves half a line: dropped, and only that trial reruns
        # (one reference prefill for its prompt, one SPTS prefill).
        (tmp_path / "trials.jsonl").write_text("\n".join(rows[:-1]) + "\n" + rows[-1][: len(rows[-1]) // 2])
        third = _tune(setup, tmp_path)
        assert counter.count == 2
    finally:
        counter.remove()
    assert again.config == first.config == third.config
    assert (tmp_path / "trials.jsonl").read_text().splitlines() == rows


def test_outputs_round_trip_and_enable(setup, tmp_path):
    model, _ = setup
    result = _tune(setup, tmp_path, measure=2, measure_repeats=1)
    for name in ("tuned.json", "trials.jsonl", "summary.json", "table.md", "frontier.png", "run.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    loaded = SPTSConfig.from_file(result.path, model)
    assert loaded == result.config and loaded.name == result.config.name
    metadata = json.loads(result.path.read_text())["metadata"]
    assert metadata["target"]["kind"] == "fidelity" and metadata["target"]["value"] == 0.5
    assert metadata["fidelity"] == result.fidelity and metadata["predicted_speedup"] == result.predicted_speedup
    assert metadata["measured_speedup"] == result.measured_speedup > 0
    assert metadata["command"].startswith("spts.tuning.tune(model, tokenizer, min_fidelity=0.5")
    ids = torch.randint(2, 90, (1, 64), generator=torch.Generator().manual_seed(1))
    with spts.enabled(model, result.path):
        assert spts.runtime.engine.runtime_of(model).config == result.config
        model(ids)
    assert not spts.is_enabled(model)
    summary = json.loads((tmp_path / "summary.json").read_text())
    chosen = next(c for c in summary["configs"] if c["fingerprint"] == summary["chosen"])
    assert chosen["prompts"] == 3 and chosen["measured"]["measured_speedup"] == result.measured_speedup
    table = (tmp_path / "table.md").read_text()
    assert "**(chosen)**" in table and "transformers" in table and "Command:" in table
    references = [r for r in _rows(tmp_path) if r["kind"] == "reference"]
    assert len(references) == 3 and all(r["answer_ids"] and r["full_logprobs"] for r in references)


def test_speed_model_fits_and_is_cached(setup, tmp_path):
    assert fit_polynomial([1, 2, 4, 8], [3 + 2 * n for n in (1, 2, 4, 8)], 1) == pytest.approx((3, 2))
    assert fit_polynomial([1, 2, 4], [5.0, 4.0, 2.0], 1)[1] == 0  # never a negative cost per token
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25))
    assert SPEED.speedup(config.with_(budgets=(0.2, 0.1)), 300) > SPEED.speedup(config, 300) > 1.0
    assert SPEED.speedup(config.with_(start_layer=3), 300) < SPEED.speedup(config, 300)
    # A local window costs the skipped candidates' projections and their window, more as the window grows.
    windows = [SPEED.speedup(config.with_(local_window=w), 300) for w in (0, 8, 64, 512)]
    assert windows == sorted(windows, reverse=True) and len(set(windows)) == 4 and windows[-1] > 1.0
    model, _ = setup
    measured, cached = load_or_measure(tmp_path, model, 128, None, "attention score", repeats=1)
    assert not cached and set(measured.coefficients) == {"attention", "ffn", "probe", "move"}
    again, cached = load_or_measure(tmp_path, model, 128, None, "attention score", repeats=1)
    assert cached and again == measured
    _, cached = load_or_measure(tmp_path, model, 256, None, "attention score", repeats=1)
    assert not cached  # another length is another measurement


def test_bad_inputs_are_refused(setup, tmp_path):
    with pytest.raises(ValueError, match="exactly one target"):
        TuneSettings()
    with pytest.raises(ValueError, match="exactly one target"):
        TuneSettings(target_speedup=1.5, min_fidelity=0.9)
    with pytest.raises(ValueError, match="min_fidelity must be in"):
        TuneSettings(min_fidelity=1.5)
    with pytest.raises(ValueError, match="SPTSConfig has no field 'speed'"):
        TuneSettings(target_speedup=1.5, space=["speed=1,2"])
    with pytest.raises(ValueError, match="beyond the model's context window of 512"):
        _tune(setup, tmp_path, length=1000)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        _tune(setup, tmp_path, prompt_file=empty)
    with pytest.raises(TuneError, match="no config of the search space is predicted to reach a 50x"):
        _tune(setup, tmp_path, target_speedup=50.0, min_fidelity=None)
    with pytest.raises(TuneError, match="no valid config for this 6-layer model"):
        _tune(setup, tmp_path, space=["start_layer=2", "stage_boundaries=3", "budgets=0.5:0.4:0.3:0.2"])
    with pytest.raises(TuneResumeError, match="holds tuning results with model 'llama', not 'other'"):
        _tune(setup, tmp_path, model_name="other")
    model, tokenizer = setup
    config = SPTSConfig(start_layer=2, stage_boundaries=(), budgets=(0.5,))
    with spts.enabled(model, config), pytest.raises(ValueError, match=r"spts\.disable"):
        tune(model, tokenizer, tmp_path, min_fidelity=0.5)


def _refusal(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_cli_refuses_bad_input_before_loading_the_model(tmp_path):
    out = ["--out", str(tmp_path / "o")]
    assert "exactly one target" in _refusal(["tune", *out])
    assert "exactly one target" in _refusal(["tune", "--target-speedup", "1.4", "--min-fidelity", "0.9", *out])
    assert "no field 'nope'" in _refusal(["tune", "--target-speedup", "1.4", "--space", "nope=1", *out])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no prompts" in _refusal(["tune", "--min-fidelity", "0.9", "--prompt-file", str(empty), *out])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert 'has no non-empty "prompt"' in _refusal(["tune", "--min-fidelity", "0.9", "--prompt-file", str(bad), *out])
    assert "unknown task 'nope'" in _refusal(["tune", "--min-fidelity", "0.9", "--tasks", "nope", *out])
    assert not (tmp_path / "o").exists()


def test_tune_cli_on_a_model_folder_with_a_prompt_file(setup, tmp_path):
    model, tokenizer = setup
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "prompts.jsonl"
    words = "the sky is blue and the grass is green . " * 30
    prompts.write_text("".join(json.dumps({"prompt": f"{words} question {i} : where ?"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["tune", "--model", str(folder), "--min-fidelity", "0.5", "--length", "300", "--prompts", "2",
            "--prompt-file", str(prompts), "--space", "start_layer=3", "--max-configs", "3", "--measure", "1",
            "--measure-repeats", "1", "--device", "cpu", "--holdout", "none", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "spts.enable(model" in result.output
    references = [r for r in _rows(out) if r["kind"] == "reference"]
    assert [r["prompt_id"][:7] for r in references] == ["file/0/", "file/1/"]
    config = SPTSConfig.from_file(out / "tuned.json", model)
    assert config.start_layer == 3
    assert json.loads((out / "speed_model.json").read_text())["key"]["length"] == 300


@pytest.mark.slow
def test_tune_cli_on_smollm2_writes_every_output(tmp_path):
    out = tmp_path / "tune"
    args = ["tune", "--model", "smollm2-135m", "--min-fidelity", "0.5", "--length", "1024", "--prompts", "2",
            "--space", "start_layer=17,20", "--space", "delta=0.03", "--space", "pool_kernel=13",
            "--max-configs", "2", "--no-ltp", "--measure", "1", "--measure-repeats", "1",
            "--holdout-prompts", "1"]  # fmt: skip
    args += ["--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("tuned.json", "table.md", "frontier.png", "summary.json", "trials.jsonl", "speed_model.json"):
        assert (out / name).stat().st_size > 0, name
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["model"] == {"model_type": "llama", "num_layers": 30}
    metadata = tuned["metadata"]
    assert metadata["predicted_speedup"] > 0 and metadata["measured_speedup"] > 0 and 0 <= metadata["fidelity"] <= 1
    assert metadata["command"].startswith("spts tune --model smollm2-135m --min-fidelity 0.5")
    assert tuned["config"]["start_layer"] in (17, 20)
    table = (out / "table.md").read_text()
    assert "spts tune: smollm2-135m" in table and "**(chosen)**" in table
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    # Two calibration prompts and one of the held-out family (the default: QA, not calibrated on by default).
    assert sum(r["kind"] == "reference" for r in trials) == 3
    assert "**Held out of calibration** (qa_squad)" in table
