"""benchmarks/transfer_table.py: issue 30's per-family, per-task table and the answer counts behind its ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer_table.py"


def write_eval(folder: Path, scores: dict[str, dict[str, list[float]]]) -> None:
    """An eval folder: per task, each method's per-sample scores."""
    folder.mkdir(parents=True)
    rows = [
        # the answer's words follow its score, so equal scores mean identical answers
        {"sample_id": f"{task}/4096/{i}", "task": task, "method": method, "score": score, "prediction": f"{score} "}
        for task, methods in scores.items()
        for method, values in methods.items()
        for i, score in enumerate(values)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    methods = list(next(iter(scores.values())))
    averages = [{"length": "4096", "method": m, "speedup": None if m == "full" else 1.6} for m in methods]
    (folder / "summary.json").write_text(json.dumps({"averages": averages}))


@pytest.fixture
def built(tmp_path: Path) -> tuple[list[dict], str]:
    write_eval(
        tmp_path / "eval",
        {
            # the full model answers samples 0, 1 and 3; 'skip' keeps 0, loses 1 and 3, answers 2 (which full misses)
            "lbf_multifieldqa_en": {"full": [1.0, 0.6, 0.0, 0.5], "skip": [1.0, 0.2, 0.7, 0.4]},
            "qa_squad": {"full": [1.0, 1.0], "skip": [1.0, 1.0]},
        },
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", f"m={tmp_path / 'eval'}", "--against", "skip", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads((out / "rows.json").read_text()), (out / "table.md").read_text()


def test_retention_per_family_and_task_is_the_methods_mean_over_the_full_models(built) -> None:
    runs, _ = built
    skip = next(m for m in runs[0]["methods"] if m["method"] == "skip")
    lbf = skip["groups"]["LongBench-format"]
    assert lbf["n"] == 4
    assert lbf["retention"] == pytest.approx((1.0 + 0.2 + 0.7 + 0.4) / (1.0 + 0.6 + 0.0 + 0.5))
    assert skip["groups"]["RULER/QA generators"]["retention"] == pytest.approx(1.0)


def test_answer_counts_name_kept_lost_and_gained_answers(built) -> None:
    runs, table = built
    skip = next(m for m in runs[0]["methods"] if m["method"] == "skip")
    lbf = {"full_answers": 3, "kept": 1, "gained": 1, "identical": 1, "prompts": 4}
    assert skip["groups"]["lbf_multifieldqa_en"]["answers"] == lbf
    squad = {"full_answers": 2, "kept": 2, "gained": 0, "identical": 2, "prompts": 2}
    assert skip["groups"]["qa_squad"]["answers"] == squad
    # generators first, as in every table
    assert "| skip | 2 of 2, +0; 2 of 2 identical | 1 of 3, +1; 1 of 4 identical |" in table


def test_several_folders_pool_their_prompts_and_keep_each_speedup(tmp_path: Path) -> None:
    write_eval(tmp_path / "seed0", {"lbf_hotpotqa": {"full": [1.0, 0.0], "skip": [1.0, 1.0]}})
    write_eval(tmp_path / "seed2", {"lbf_hotpotqa": {"full": [1.0, 1.0], "skip": [0.0, 1.0]}})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", f"m={tmp_path / 'seed0'}+{tmp_path / 'seed2'}", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    skip = next(m for m in json.loads((out / "rows.json").read_text())[0]["methods"] if m["method"] == "skip")
    assert skip["groups"]["lbf_hotpotqa"]["n"] == 4  # same sample ids in both folders, counted apart
    assert skip["groups"]["lbf_hotpotqa"]["retention"] == pytest.approx(3 / 3)
    assert skip["groups"]["lbf_hotpotqa"]["answers"] == {
        "full_answers": 3, "kept": 2, "gained": 1, "identical": 2, "prompts": 4}  # fmt: skip
    assert skip["speedups"] == [1.6, 1.6]


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    write_eval(tmp_path / "seed0", {"lbf_hotpotqa": {"full": [1.0], "skip": [1.0]}})
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", f"m={tmp_path / 'seed0'}+{tmp_path / 'nope'}", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "nope has no summary.json" in result.stderr
