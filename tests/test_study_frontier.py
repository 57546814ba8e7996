"""benchmarks/study_frontier.py: the per-model accuracy-vs-speed table the README quotes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_frontier.py"


def write_eval(folder: Path, scores: dict[str, list[float]], table_n: int | None = None) -> None:
    """An eval folder: one task, each method's per-sample scores, and the summary its table would hold."""
    folder.mkdir(parents=True)
    rows = [
        {"sample_id": f"qa/4096/{i}", "method": method, "score": score}
        for method, values in scores.items()
        for i, score in enumerate(values)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    n = table_n or min(len(v) for v in scores.values())
    averages = [
        {
            "length": "4096",
            "method": method,
            "n": n,
            "score": 100 * sum(values[:n]) / n,
            "speedup": None,
            "kv_fraction": 1.0 if method == "full" else 0.5,
        }
        for method, values in scores.items()
    ]
    (folder / "summary.json").write_text(json.dumps({"averages": averages}))


def write_bench(folder: Path, speedups: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"length": 4096, "method": method, "speedup": speedup} for method, speedup in speedups.items()]
    (folder / "summary.json").write_text(json.dumps({"rows": rows}))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_table_and_plot_take_scores_from_the_eval_and_speed_from_the_bench(tmp_path: Path) -> None:
    # 'slow' answered half as well as the full model on every sample; 'same' exactly as well
    write_eval(tmp_path / "eval", {"full": [0.8, 0.4, 0.6, 1.0], "same": [0.8, 0.4, 0.6, 1.0],
                                   "slow": [0.4, 0.2, 0.3, 0.5]})  # fmt: skip
    write_bench(tmp_path / "bench", {"full": 1.0, "same": 1.5})
    result = run(
        "--run", f"m={tmp_path / 'eval'}:{tmp_path / 'bench'}", "--target", "90", "--out", str(tmp_path / "out")
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "table.md").read_text()
    assert "--target 90 --out" in table  # the command that rebuilds it, on top
    assert "| same | 4 | 70.0 | 100% (100%-100%) | 1.50x | 50% |" in table
    # not timed by the bench, and no paired TTFT in the eval: no speed claimed, left off the plot
    assert "| slow | 4 | 35.0 | 50% (50%-50%) | - | 50% |" in table
    assert (tmp_path / "out" / "accuracy_vs_speedup.png").stat().st_size > 0
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert {m["method"]: m["speedup_source"] for m in rows[0]["methods"]}["same"] == "bench"


def test_against_gives_paired_differences_over_the_same_samples(tmp_path: Path) -> None:
    write_eval(tmp_path / "eval", {"full": [0.8, 0.4, 0.6, 1.0], "same": [0.8, 0.4, 0.6, 1.0],
                                   "slow": [0.4, 0.2, 0.3, 0.5]})  # fmt: skip
    result = run("--run", f"m={tmp_path / 'eval'}", "--against", "same", "--against", "absent", "--out",
                 str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "table.md").read_text()
    assert "--against same --against absent" in table
    assert "| full | +0.0 (+0.0 to +0.0) |" in table
    # 'same' beats 'slow' by 40, 20, 30, 50 points on the four samples: every resample's mean lies in 20-50
    difference = next(line for line in table.splitlines() if line.startswith("| slow | +"))
    mean, low, high = (float(x) for x in re.findall(r"[+-][\d.]+", difference))
    assert mean == 35.0 and 20.0 <= low < mean < high <= 50.0
    assert "absent minus" not in table  # a method the folder does not hold has no section
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert "same" not in {m["method"]: m for m in rows[0]["methods"]}["same"]["minus"]


def test_refuses_a_table_counted_over_other_samples_than_every_method_answered(tmp_path: Path) -> None:
    # 'full' has rows for 4 samples, 'other' for 2, but the table claims 4 per method: the interval would not
    # come from the prompts the scores come from
    write_eval(tmp_path / "eval", {"full": [1.0, 1.0, 1.0, 1.0], "other": [1.0, 0.0]}, table_n=4)
    result = run("--run", f"m={tmp_path / 'eval'}", "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "answered by every method" in result.stderr and "--samples" in result.stderr


@pytest.mark.parametrize("spec", ["no-folders", "=x"])
def test_refuses_a_malformed_run(tmp_path: Path, spec: str) -> None:
    result = run("--run", spec, "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "NAME=EVAL_DIR" in result.stderr
