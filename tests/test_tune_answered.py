"""``spts tune --objective answered``: quality counted on the prompts the full model answers, and calibration
prompts drawn among those (deterministic, resumable, with the tasks it cannot answer given up).

The tiny random model of tests/test_tune_families.py answers nothing, so the whole-run tests grade with a stand-in
metric that says which prompts count as answered (samples with an even index), leaving the search, the selection
and the reports real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spts.tasks import PromptRenderer
from spts.tuning import TuneError, TuneSettings
from spts.tuning import scoring as scoring_module
from spts.tuning.prompts import answered_prompts, generated_prompts
from spts.tuning.quality import aggregate
from test_tune import PrefillCounter, _rows
from test_tune_families import TASKS, _trial, _tune, setup  # noqa: F401  (setup: the module's fixture)
from test_zoo_haystack import _tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _index(prompt_or_sample) -> int:
    sample = getattr(prompt_or_sample, "sample", prompt_or_sample)
    return sample.index


def test_answered_rates_only_the_prompts_the_full_model_answers():
    families = ["ruler", "ruler", "longbench-format", "longbench-format", "qa"]
    references = [{"task_score": s} for s in (1.0, 0.2, 0.8, 0.0, 0.4)]
    trials = [_trial(1.0, 0.5), _trial(0.0, 0.0), _trial(1.0, 0.4), _trial(0.1, 0.0), _trial(0.2, 0.0)]
    result = aggregate("a", trials, "answered", references, families)
    # ruler: prompt 1 only (0.5 / 1.0; prompt 2's 0.2 is below 0.5); lbf: prompt 3 only (0.4 / 0.8); qa: none.
    assert result.families["ruler"]["quality"] == 0.5 and result.families["ruler"]["answered"] == 1
    assert result.families["longbench-format"]["quality"] == 0.5
    assert "quality" not in result.families["qa"] and result.families["qa"]["answered"] == 0
    assert result.quality == 0.5  # the worst family with an answered prompt
    # Better than the full model earns nothing; a lower threshold counts more prompts.
    better = aggregate("b", [_trial(0.0, 1.0)], "answered", [{"task_score": 0.6}], ["ruler"])
    assert better.quality == 1.0
    lower = aggregate("a", trials, "answered", references, families, answered_min=0.1)
    assert lower.families["ruler"]["answered"] == 2 and lower.families["ruler"]["quality"] == pytest.approx(0.25)
    assert lower.families["qa"]["quality"] == 0.0 and lower.quality == 0.0
    # No prompt answered at all: every config of the rung falls back to its fidelity alike.
    none = aggregate("c", trials[3:], "answered", references[3:], families[3:])
    assert none.quality == none.fidelity == pytest.approx(0.15)
    with pytest.raises(ValueError, match="needs task scores"):
        aggregate("a", [_trial(1.0)], "answered", [{"task_score": 1.0}], ["ruler"])


def test_answered_prompts_are_drawn_in_plan_order_and_hopeless_tasks_given_up():
    renderer = PromptRenderer(_tiny_tokenizer(chat=True))
    calls = []

    def full_score(prompt):  # needles: even samples answered; LongBench-format: none
        calls.append(prompt.prompt_id)
        return float(prompt.source == "niah_single" and _index(prompt) % 2 == 0)

    selection = answered_prompts(renderer, 3, (450, 600), full_score, 0.5, seed=0, tasks=TASKS, max_misses=3)
    assert [p.prompt_id for p in selection.prompts] == [
        "niah_single/450/0/seed1000000", "niah_single/600/0/seed1000000", "niah_single/450/2/seed1000000",
    ]  # fmt: skip
    assert selection.exhausted == ["lbf_multifieldqa_en/600", "lbf_multifieldqa_en/450"]
    assert selection.drawn["niah_single/450"] == {"drawn": 3, "kept": 2}
    assert selection.drawn["lbf_multifieldqa_en/600"] == {"drawn": 3, "kept": 0}
    assert len(calls) == len(set(calls)) == sum(c["drawn"] for c in selection.drawn.values())
    # The prompts are the generator's, the same as the plain draw of those samples; deterministic for a seed.
    plain = {p.prompt_id: p for p in generated_prompts(renderer, 12, (450, 600), seed=0, tasks=TASKS)}
    assert all(p == plain[p.prompt_id] and p.sample == plain[p.prompt_id].sample for p in selection.prompts)
    again = answered_prompts(renderer, 3, (450, 600), full_score, 0.5, seed=0, tasks=TASKS, max_misses=3)
    assert again.prompts == selection.prompts and again.to_dict() == selection.to_dict()
    # Every task given up: fewer prompts than asked, after max_misses draws of each task and length.
    calls.clear()
    nothing = answered_prompts(renderer, 3, (450,), lambda p: calls.append(p) or 0.0, 0.5, tasks=TASKS, max_misses=2)
    assert nothing.prompts == [] and len(calls) == 4 and len(nothing.exhausted) == 2


@pytest.fixture
def even_samples_answered(monkeypatch):
    """Grade every answer 1 on samples with an even index, 0 on odd ones: the full model answers the even ones."""
    monkeypatch.setattr(scoring_module, "grade", lambda sample, prediction: float(sample.index % 2 == 0))


def test_an_answered_tune_calibrates_on_answered_prompts_deterministically_and_resumes(
    setup,  # noqa: F811
    tmp_path,
    even_samples_answered,
):
    model, _ = setup
    first = _tune(setup, tmp_path / "a", objective="answered", prompts=6)
    second = _tune(setup, tmp_path / "b", objective="answered", prompts=6)
    trials = (tmp_path / "a" / "trials.jsonl").read_text()
    assert trials == (tmp_path / "b" / "trials.jsonl").read_text() and first.config == second.config
    rows = _rows(tmp_path / "a")
    calibration = [p["prompt_id"] for p in first.summary["prompts"]]
    assert len(calibration) == 6 and all(int(p.split("/")[2]) % 2 == 0 for p in calibration)
    # The odd samples were drawn (their full answers stored) and skipped: no config was scored on them.
    references = {r["prompt_id"]: r for r in rows if r["kind"] == "reference"}
    assert any(int(p.split("/")[2]) % 2 for p in references)
    assert {r["prompt_id"] for r in rows if r["kind"] == "trial"} <= set(calibration) | {
        p["prompt_id"] for p in first.holdout["prompts"]
    }
    selection = first.summary["prompt_selection"]
    assert selection["answered_min"] == 0.5 and sum(c["kept"] for c in selection["drawn"].values()) == 6
    chosen = next(c for c in first.summary["configs"] if c["fingerprint"] == first.summary["chosen"])
    assert all(f["answered"] == f["prompts"] for f in chosen["families"].values())
    table = (tmp_path / "a" / "table.md").read_text()
    assert "Objective: **answered**" in table and "**Calibration prompts the full model answers**" in table
    assert "ruler: 3 (3 answered)" in table
    assert json.loads(first.path.read_text())["metadata"]["objective"] == "answered"
    # Resuming draws the same prompts from the stored answers: no prefill at all.
    counter = PrefillCounter(model)
    try:
        again = _tune(setup, tmp_path / "a", objective="answered", prompts=6)
    finally:
        counter.remove()
    assert counter.count == 0 and again.config == first.config
    assert (tmp_path / "a" / "trials.jsonl").read_text() == trials
    # benchmarks/rerank_tune.py rates the last rung from the stored trials as the run did.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rerank_tune.py"
    out = subprocess.run([sys.executable, script, tmp_path / "a", "--objectives", "answered,blend", "--rungs", "1"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    final = [c for c in first.summary["configs"] if c["prompts"] == 6]
    assert f"## Rung of 6 prompts ({len(final)} configs)" in out
    for config in final:
        row = re.search(rf"\| `{config['fingerprint']}` \| [^|]+ \| ([0-9.]+) \(\d+\) \| ([0-9.]+)", out)
        assert float(row.group(1)) == pytest.approx(config["quality"], abs=5e-4)


def test_an_answered_tune_says_what_to_do_when_the_full_model_answers_nothing(setup, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(scoring_module, "grade", lambda sample, prediction: 0.0)
    with pytest.raises(TuneError, match=r"answers none of the calibration prompts drawn.*lower --answered-min"):
        _tune(setup, tmp_path, objective="answered", prompts=2)


def test_bad_answered_settings_are_refused():
    for options, message in (
        ({"objective": "answered", "answered_min": 0.0}, r"answered_min must be in \(0, 1\]"),
        ({"objective": "answered", "answered_min": 1.5}, r"answered_min must be in \(0, 1\]"),
        ({"objective": "answered", "prompt_file": "p.jsonl"}, "a prompt file has none"),
        ({"objective": "answered", "max_misses": 0}, "max_misses must be an int >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            TuneSettings(target_speedup=1.5, **options)
