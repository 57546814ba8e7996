"""`spts eval` end to end on the real SmolLM2: every task, two samples each, full vs SPTS, all outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spts.cli import app
from spts.tasks import GROUPS

# The default --tasks: the generators (the LongBench-format family is asked for by name).
TASKS = GROUPS["all"]


@pytest.mark.slow
def test_eval_cli_on_smollm2_writes_every_output(tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--model", "smollm2-135m", "--lengths", "1024", "--samples", "2", "--methods", "full,spts"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(TASKS) * 2 * 2
    assert {r["task"] for r in rows} == set(TASKS)
    for row in rows:
        assert 0.75 * 1024 <= row["prompt_tokens"] <= 1024 and row["ttft_s"] > 0 and 0 <= row["score"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["full", "spts"] and len(summary["cells"]) == len(TASKS) * 2
    assert (
        "spts eval --model smollm2-135m --tasks all --lengths 1024 --samples 2 --methods full,spts" in summary["header"]
    )
    assert "--ltp" in summary["header"] and "--seed 0" in summary["header"]
    assert (out / "accuracy_vs_speedup.png").stat().st_size > 0
    assert "| niah_single | 2 |" in (out / "table.md").read_text()
    # A second identical command finds everything done and only rewrites the reports.
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(rows)
    # Another seed builds other prompts under the same sample ids: not mixed into this folder.
    assert "another prompt than this run builds" in _refusal([*args, "--seed", "1", "--out", str(out)])
    # A new folder copies the finished answers instead of recomputing them.
    copied = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "copied"), "--copy-from", str(out)])
    assert copied.exit_code == 0, copied.output
    copied_rows = [json.loads(line) for line in (tmp_path / "copied" / "samples.jsonl").read_text().splitlines()]
    assert copied_rows == [row | {"copied_from": str(out)} for row in rows]


def _refusal(args: list[str]) -> str:
    """The error a refused command prints, unwrapped from rich's box."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_eval_cli_rejects_bad_input(tmp_path):
    assert "unknown task 'niah'" in _refusal(["eval", "--tasks", "niah", "--out", str(tmp_path)])
    assert "context window of 8192" in _refusal(["eval", "--lengths", "65536", "--out", str(tmp_path)])
    # a folder without hotpotqa.jsonl, and no folder at all
    assert "--longbench-dir" in _refusal(["eval", "--longbench-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    missing = ["eval", "--longbench-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]
    assert "is not a folder" in _refusal(missing)
