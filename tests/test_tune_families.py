"""``spts tune`` across prompt families and lengths: the development-split objectives (task score, blend), the
held-out family, several lengths, budgets that grow slower than the prompt; determinism, resume, and the fidelity
objective kept as it was.

A tiny random LLaMA with a 1024-token window and the word-level tokenizer of tests/test_eval.py, with a fixed speed
model, so runs are deterministic and take seconds.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

import spts
from conftest import tiny_model
from spts import SPTSConfig
from spts.cli import app
from spts.generation import greedy_continue, prefill_with_cache
from spts.tasks import GROUPS, PromptRenderer
from spts.tuning import TuneResumeError, TuneSettings, tune
from spts.tuning import objective as objective_module
from spts.tuning.holdout import resolve
from spts.tuning.objective import reference_run, score_config
from spts.tuning.prompts import DEFAULT_TASKS, LEGACY_TASKS, families_of, generated_prompts, prompt_plan
from spts.tuning.quality import aggregate
from spts.tuning.search import Aggregate, Target, ranking
from spts.tuning.space import fingerprint
from test_tune import SPEED, PrefillCounter, _rows
from test_zoo_haystack import _tiny_tokenizer

TASKS = ("niah_single", "lbf_multifieldqa_en")
LENGTHS = (450, 600)
SPACE = ("start_layer=2,3", "delta=0.0", "pool_kernel=1,3", "budget_exponent=1.0,0.5")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    tokenizer = _tiny_tokenizer(chat=True)
    return tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=1024), tokenizer


def _tune(setup, out, **options):
    model, tokenizer = setup
    kwargs = dict(
        target_speedup=1.2, prompts=4, lengths=LENGTHS, tasks=TASKS, holdout=("qa_squad",), holdout_prompts=2,
        space=SPACE, max_configs=6, measure=0, seed=0,
    )  # fmt: skip
    kwargs.update(options)
    return tune(model, tokenizer, out, speed_model=SPEED, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# prompts, families, held-out tasks
# ------------------------------------------------------------------------------------------------------------


def test_prompts_cycle_over_tasks_and_lengths():
    # One length: prompt i is sample i // T of task i % T, as before lengths were a list.
    assert prompt_plan(7, 3, (4096,)) == [(i % 3, 4096, i // 3) for i in range(7)]
    plan = prompt_plan(12, 3, (4096, 8192))
    assert len(set(plan)) == 12  # no prompt twice
    assert {(t, n) for t, n, i in plan[:6]} == {(t, n) for t in range(3) for n in (4096, 8192)}  # each pair once
    assert [n for _, n, _ in plan[:4]] == [4096, 8192, 4096, 8192]  # the first rungs see both lengths
    assert prompt_plan(5, 3, (4096, 8192)) == plan[:5]
    renderer = PromptRenderer(_tiny_tokenizer(chat=True))
    prompts = generated_prompts(renderer, 4, LENGTHS, seed=0, tasks=TASKS)
    assert [p.prompt_id for p in prompts] == [
        "niah_single/450/0/seed1000000", "lbf_multifieldqa_en/600/0/seed1000000",
        "niah_single/600/0/seed1000000", "lbf_multifieldqa_en/450/0/seed1000000",
    ]  # fmt: skip
    assert [p.family for p in prompts] == ["ruler", "longbench-format"] * 2
    assert all(p.length <= p.target_length and p.sample.references for p in prompts)
    assert generated_prompts(renderer, 3, LENGTHS, seed=0, tasks=TASKS) == prompts[:3]


def test_the_held_out_family_and_the_calibration_tasks():
    calibration, held = resolve(None, None, prompt_file=False)
    assert held == GROUPS["qa"] and calibration == tuple(t for t in DEFAULT_TASKS if t not in GROUPS["qa"])
    assert families_of(calibration) == ("ruler", "longbench-format")
    # The first of qa, lbf, ruler that calibration leaves out.
    assert resolve(["niah_single", "vt"], None, False) == (("niah_single", "vt"), GROUPS["qa"])
    assert resolve(["ruler", "qa_squad"], None, False)[1] == GROUPS["lbf"]
    assert resolve(["niah_single", "qa_squad", "lbf_hotpotqa"], None, False)[1] == ()
    assert resolve(None, ["lbf"], False) == (tuple(t for t in DEFAULT_TASKS if not t.startswith("lbf")), GROUPS["lbf"])
    assert resolve(LEGACY_TASKS, ["none"], False) == (LEGACY_TASKS, ())
    assert resolve(None, None, prompt_file=True) == ((), GROUPS["qa"])
    with pytest.raises(ValueError, match="both calibrated on and held out"):
        resolve(["niah_single", "qa_squad"], ["qa"], False)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        resolve(None, ["nope"], False)
    with pytest.raises(ValueError, match="every default calibration task is held out"):
        resolve(None, ["ruler", "qa", "lbf"], False)


# ------------------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------------------


def _trial(fidelity, score=None):
    row = {"fidelity": fidelity, "first_match": True, "matches": [True], "logprob_gap": 0.0}
    return row if score is None else {**row, "task_score": score}


def test_objectives_rank_by_the_worst_family_with_a_one_sided_loss():
    families = ["ruler", "ruler", "longbench-format", "longbench-format"]
    references = [{"task_score": s} for s in (1.0, 0.0, 1.0, 0.5)]
    trials = [_trial(1.0, 1.0), _trial(0.5, 1.0), _trial(1.0, 0.0), _trial(0.5, 0.5)]
    fidelity = aggregate("a", trials, "fidelity", references, families)
    assert fidelity.quality == fidelity.fidelity == 0.75
    score = aggregate("a", trials, "score", references, families, [4096, 8192, 4096, 8192])
    # ruler: no loss (prompt 2: the config beats the full model, which earns nothing); lbf: losses 1 and 0.
    assert score.families["ruler"]["quality"] == 1.0 and score.families["longbench-format"]["quality"] == 0.5
    assert score.quality == 0.5  # the worst family
    assert score.retention == pytest.approx(2.5 / 2.5) and score.families["longbench-format"]["retention"] == 0.5 / 1.5
    assert score.lengths["4096"]["quality"] == 0.5 and score.lengths["8192"]["quality"] == 1.0
    blend = aggregate("a", trials, "blend", references, families)
    assert blend.families["ruler"]["quality"] == pytest.approx(0.5 * 0.75 + 0.5)
    assert blend.quality == pytest.approx(0.5 * 0.75 + 0.5 * 0.5)
    one_family = aggregate("a", trials[:2], "score", references[:2], families[:2])
    assert one_family.quality == 1.0
    with pytest.raises(ValueError, match="needs task scores"):
        aggregate("a", [_trial(1.0)], "score", [{"task_score": 1.0}], ["ruler"])


def test_the_fidelity_objective_ranks_as_the_fidelity_only_tuner():
    rng = random.Random(0)
    aggregates = [
        Aggregate(f"{i:02d}", 4, fidelity=rng.choice((0.5, 0.75, 0.9, 1.0)), first_token=1.0, token_agreement=1.0,
                  logprob_gap=rng.choice((0.1, 0.2)))
        for i in range(40)
    ]  # fmt: skip
    speeds = {a.fingerprint: rng.choice((1.3, 1.5, 1.7)) for a in aggregates}
    legacy_speedup = sorted(
        aggregates, key=lambda a: (-a.fidelity, a.logprob_gap, -speeds[a.fingerprint], a.fingerprint)
    )
    assert sorted(aggregates, key=ranking(Target("speedup", 1.2), speeds)) == legacy_speedup

    def legacy_fidelity(a):
        if a.fidelity >= 0.8:
            return (0, -speeds[a.fingerprint], -a.fidelity, a.logprob_gap, a.fingerprint)
        return (1, -a.fidelity, a.logprob_gap, -speeds[a.fingerprint], a.fingerprint)

    assert sorted(aggregates, key=ranking(Target("fidelity", 0.8), speeds)) == sorted(aggregates, key=legacy_fidelity)
    # Several lengths: the guaranteed (smallest) speedup first; the mean over lengths breaks its ties.
    twins = [Aggregate(fp, 4, 0.9, 1.0, 1.0, 0.1) for fp in ("a", "b")]
    key = ranking(Target("speedup", 1.2), {"a": 1.5, "b": 1.5}, {"a": 1.6, "b": 1.9})
    assert [a.fingerprint for a in sorted(twins, key=key)] == ["b", "a"]


# ------------------------------------------------------------------------------------------------------------
# task answers
# ------------------------------------------------------------------------------------------------------------


def test_task_answers_are_greedy_answers_and_leave_the_teacher_forced_scores_alone(setup):
    model, tokenizer = setup
    prompt = generated_prompts(PromptRenderer(tokenizer), 1, 600, seed=0, tasks=["lbf_multifieldqa_en"])[0]
    budget = prompt.sample.max_new_tokens
    reference = reference_run(model, tokenizer, "p", prompt.input_ids, 3, task_tokens=budget)
    plain = reference_run(model, tokenizer, "p", prompt.input_ids, 3)
    assert (reference.answer_ids, reference.full_logprobs) == (plain.answer_ids, plain.full_logprobs)
    logits, cache = prefill_with_cache(model, prompt.input_ids)
    assert reference.task_answer == greedy_continue(model, tokenizer, logits, cache, budget, fast=True)
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.3, 0.15), pool_kernel=3)
    graded = score_config(model, reference, config, tokenizer=tokenizer, task_tokens=budget)
    assert graded.matches == score_config(model, reference, config).matches  # decoding left the cache alone
    with spts.enabled(model, config):
        logits, cache = prefill_with_cache(model, prompt.input_ids)
        assert graded.task_answer == greedy_continue(model, tokenizer, logits, cache, budget, fast=True)
    whole = score_config(model, reference, config.with_(budgets=(1.0,), stage_boundaries=()), tokenizer=tokenizer,
                         task_tokens=budget)  # fmt: skip
    assert whole.task_answer == reference.task_answer


# ------------------------------------------------------------------------------------------------------------
# budgets that grow slower than the prompt
# ------------------------------------------------------------------------------------------------------------


def test_budget_exponent_grows_budgets_slower_than_the_prompt(setup):
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), budget_exponent=0.5)
    fraction = config.with_(budget_exponent=1.0)
    assert [config.stage_budget(0, n) for n in (4096, 8192, 16384)] == [2048, 2897, 4096]  # 0.5 * 4096 * sqrt(L/R)
    assert [fraction.stage_budget(0, n) for n in (4096, 8191, 8192)] == [2048, 4096, 4096]  # ceil(f * L), as before
    assert config.with_(budget_exponent=0.0).stage_budget(1, 32768) == 1024  # absolute: f * R
    assert config.with_(budget_reference=8192).stage_budget(0, 8192) == 4096
    assert fingerprint(fraction) == fingerprint(SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25)))
    assert fingerprint(config) != fingerprint(fraction)
    assert SPEED.speedup(config, 8192) > SPEED.speedup(fraction, 8192)
    assert SPEED.speedup(config, 4096) == SPEED.speedup(fraction, 4096)
    for bad in ({"budget_exponent": 1.5}, {"budget_exponent": -0.1}, {"budget_exponent": True},
                {"budget_reference": 8}):  # fmt: skip
        with pytest.raises(ValueError, match="budget_"):
            config.with_(**bad)
    # A budget of at least the prompt keeps every token: the unmodified model's logits and cache.
    model, _ = setup
    ids = torch.randint(2, 90, (1, 300), generator=torch.Generator().manual_seed(0))
    short = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.3), budget_exponent=0.25)
    assert short.stage_budget(1, 300) >= 300
    with torch.inference_mode():
        full = model(ids, use_cache=True)
        with spts.enabled(model, short):
            skipped = model(ids, use_cache=True)
    torch.testing.assert_close(skipped.logits, full.logits, rtol=0, atol=1e-5)
    for a, b in zip(full.past_key_values.layers, skipped.past_key_values.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# whole runs
# ------------------------------------------------------------------------------------------------------------


def test_cross_family_cross_length_tune_is_deterministic_and_resumable(setup, tmp_path, monkeypatch):
    model, _ = setup
    decodes = []
    decode = objective_module.greedy_continue
    monkeypatch.setattr(objective_module, "greedy_continue", lambda *a, **k: decodes.append(1) or decode(*a, **k))
    first = _tune(setup, tmp_path / "a")
    assert decodes  # the blend objective decoded answers
    second = _tune(setup, tmp_path / "b")
    trials = (tmp_path / "a" / "trials.jsonl").read_text()
    assert trials == (tmp_path / "b" / "trials.jsonl").read_text()
    assert first.config == second.config and first.quality == second.quality and first.holdout == second.holdout
    summary = first.summary
    assert summary["objective"] == "blend" and summary["lengths"] == [450, 600]
    assert summary["calibration_tasks"] == list(TASKS) and summary["holdout_tasks"] == ["qa_squad"]
    chosen = next(c for c in summary["configs"] if c["fingerprint"] == summary["chosen"])
    assert set(chosen["families"]) == {"ruler", "longbench-format"} and set(chosen["lengths"]) == {"450", "600"}
    assert chosen["quality"] == min(f["quality"] for f in chosen["families"].values())
    assert chosen["predicted_speedup"] == min(chosen["predicted_by_length"].values()) >= 1.2
    rows = _rows(tmp_path / "a")
    assert all("task_score" in r for r in rows if r["kind"] in ("trial", "reference"))
    assert {r["prompt_id"].split("/")[1] for r in rows if r["kind"] == "reference"} == {"450", "600"}
    held = first.holdout
    assert held["tasks"] == ["qa_squad"] and held["overall"]["prompts"] == 2 and set(held["families"]) == {"qa"}
    assert held["prompts"][0]["prompt_id"].startswith("qa_squad/450/0/seed1000000")
    table = (tmp_path / "a" / "table.md").read_text()
    assert "**Held out of calibration** (qa_squad)" in table and "| family qa | 2 |" in table
    assert "| quality | ruler | longbench-format |" in table and "450: quality" in table
    metadata = json.loads(first.path.read_text())["metadata"]
    assert metadata["objective"] == "blend" and metadata["lengths"] == [450, 600]
    assert metadata["quality"] == first.quality and "qa" in metadata["holdout_retention"]
    # Resuming recomputes nothing: no prefill, no decoding; the same choice and outputs.
    counter, decodes[:] = PrefillCounter(model), []
    try:
        again = _tune(setup, tmp_path / "a")
    finally:
        counter.remove()
    assert counter.count == 0 and not decodes
    assert again.config == first.config and again.holdout == first.holdout
    assert (tmp_path / "a" / "trials.jsonl").read_text() == trials
    other = _tune(setup, tmp_path / "c", seed=1)
    assert {r["prompt_id"] for r in _rows(tmp_path / "c")}.isdisjoint({r["prompt_id"] for r in rows})
    assert other.summary["lengths"] == [450, 600]


def test_fidelity_objective_writes_the_old_rows_and_resumes_old_folders(setup, tmp_path):
    model, _ = setup
    options = dict(objective="fidelity", holdout=("none",), lengths=(), length=450, min_fidelity=0.5,
                   target_speedup=None)  # fmt: skip
    result = _tune(setup, tmp_path, **options)
    rows = _rows(tmp_path)
    legacy_trial = {"kind", "fingerprint", "prompt_id", "config", "answer_tokens", "first_match", "fidelity",
                    "logprob_gap", "matches", "logprobs", "kv_tokens"}  # fmt: skip
    assert all(set(r) == legacy_trial for r in rows if r["kind"] == "trial")
    assert all(set(r) == {"kind", "prompt_id", "prompt_tokens", "answer_ids", "answer", "full_logprobs", "source"}
               for r in rows if r["kind"] == "reference")  # fmt: skip
    assert result.quality == result.fidelity and result.holdout is None
    # A folder of the fidelity-only tuner (no objective in run.json) resumes with the fidelity objective ...
    run = json.loads((tmp_path / "run.json").read_text())
    del run["objective"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    counter = PrefillCounter(model)
    try:
        again = _tune(setup, tmp_path, **options)
    finally:
        counter.remove()
    assert counter.count == 0 and again.config == result.config
    # ... and is not mixed with another objective.
    with pytest.raises(TuneResumeError, match=r"objective 'fidelity', not 'blend'.*--objective fidelity"):
        _tune(setup, tmp_path, **{**options, "objective": "blend"})


def test_the_held_out_score_is_added_to_a_fidelity_run(setup, tmp_path):
    result = _tune(setup, tmp_path, objective="fidelity")
    assert result.holdout["overall"]["prompts"] == 2
    trial_rows = [r for r in _rows(tmp_path) if r["kind"] == "trial"]
    assert all("task_score" in r for r in trial_rows if r["prompt_id"].startswith("qa_squad"))
    assert not any("task_score" in r for r in trial_rows if not r["prompt_id"].startswith("qa_squad"))


def test_bad_settings_are_refused(setup, tmp_path):
    for options, message in (
        ({"objective": "nope"}, "objective must be one of fidelity, score, blend"),
        ({"objective": "score", "prompt_file": "p.jsonl"}, "a prompt file has none"),
        ({"lengths": (4096, 4096)}, "lengths must be distinct ints"),
        ({"lengths": (8,)}, "lengths must be distinct ints"),
        ({"length": 2048, "lengths": (4096, 8192)}, "give length or lengths, not both"),
        ({"prompt_file": "p.jsonl", "lengths": (4096, 8192)}, "give length"),
        ({"tasks": ("niah_single", "qa_squad"), "holdout": ("qa",)}, "both calibrated on and held out"),
        ({"holdout": ("nope",)}, "unknown task 'nope'"),
        ({"tasks": "niah_single"}, "sequences of names"),
        ({"holdout_prompts": -1}, "holdout_prompts must be an int >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            TuneSettings(target_speedup=1.5, **options)
    assert TuneSettings(target_speedup=1.5).resolved_objective == "blend"
    assert TuneSettings(target_speedup=1.5, prompt_file="p.jsonl").resolved_objective == "fidelity"
    assert TuneSettings(target_speedup=1.5, lengths=(4096, 8192)).all_lengths == (4096, 8192)
    with pytest.raises(ValueError, match="beyond the model's context window of 1024"):
        _tune(setup, tmp_path, lengths=(600, 2000))


def test_cli_refuses_bad_family_and_length_options_before_loading_the_model(tmp_path):
    out = ["--target-speedup", "1.4", "--out", str(tmp_path / "o")]
    for args, message in (
        (["--lengths", "4096,abc"], "--lengths takes comma-separated token counts"),
        (["--objective", "nope"], "objective must be one of"),
        (["--tasks", "niah_single,qa_squad", "--holdout", "qa"], "both calibrated on and held out"),
        (["--holdout", "nope"], "unknown task 'nope'"),
    ):
        result = CliRunner().invoke(app, ["tune", *args, *out])
        assert result.exit_code != 0, result.output
        assert message in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "o").exists()


def test_tune_cli_across_families_and_lengths(setup, tmp_path):
    model, tokenizer = setup
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    args = ["tune", "--model", str(folder), "--target-speedup", "1.05", "--lengths", "450,600", "--prompts", "2",
            "--tasks", "niah_single,lbf_multifieldqa_en", "--holdout", "qa_squad", "--holdout-prompts", "1",
            "--objective", "score", "--space", "start_layer=3", "--max-configs", "2", "--measure", "1",
            "--measure-repeats", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "score" and summary["lengths"] == [450, 600]
    assert summary["holdout_tasks"] == ["qa_squad"] and summary["holdout"]["overall"]["prompts"] == 1
    chosen = next(c for c in summary["configs"] if c["fingerprint"] == summary["chosen"])
    assert set(chosen["measured"]["by_length"]) == {"450", "600"}
    assert chosen["measured"]["measured_speedup"] == min(
        t["measured_speedup"] for t in chosen["measured"]["by_length"].values()
    )
    assert json.loads((out / "speed_model.json").read_text())["key"]["length"] == 600  # measured at the longest
    assert json.loads((out / "run.json").read_text())["objective"] == "score"
