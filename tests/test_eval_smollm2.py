"""`spts eval` end to end on the real SmolLM2: every task, two samples each, full vs SPTS, all outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spts.cli import app
from spts.eval import TASKS


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
    assert "spts eval --model smollm2-135m" in summary["header"]
    assert (out / "accuracy_vs_speedup.png").stat().st_size > 0
    assert "| niah_single | 2 |" in (out / "table.md").read_text()
    # A second identical command finds everything done and only rewrites the reports.
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(rows)


@pytest.mark.slow
def test_eval_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    bad_task = runner.invoke(app, ["eval", "--tasks", "niah", "--out", str(tmp_path)])
    assert bad_task.exit_code != 0 and "unknown task 'niah'" in bad_task.output
    too_long = runner.invoke(app, ["eval", "--lengths", "65536", "--out", str(tmp_path)])
    assert too_long.exit_code != 0 and "context window of 8192" in too_long.output
    no_longbench = runner.invoke(app, ["eval", "--longbench-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert no_longbench.exit_code != 0 and "--longbench-dir" in no_longbench.output  # no hotpotqa.jsonl there
    not_a_folder = runner.invoke(app, ["eval", "--longbench-dir", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert not_a_folder.exit_code != 0 and "is not a folder" in not_a_folder.output
