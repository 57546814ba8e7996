"""``spts bench --batch-size N``: left-padded batches of mixed lengths, full vs SPTS, batched and one by one."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_model
from spts import SPTSConfig
from spts.bench.batched import left_padded_batch, mixed_lengths, run_batch_bench, write_batch_reports
from spts.methods import resolve_methods

CONFIG = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)


def test_mixed_lengths_spread_down_to_half_and_batches_are_left_padded():
    assert mixed_lengths(4096, 4) == [4096, 3413, 2731, 2048]
    assert mixed_lengths(100, 1) == [100]
    import torch

    ids, mask = left_padded_batch([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batch_bench_measures_both_modes_for_every_method_writes_reports_and_resumes(tmp_path):
    model = tiny_model("llama")
    methods = resolve_methods("full,spts", CONFIG)
    rows = run_batch_bench(model, [96, 160], 3, methods, tmp_path, repeats=2, warmup=1, new_tokens=4, progress=False)
    assert [(r.length, r.method, r.mode) for r in rows] == [
        (n, m, mode) for n in (96, 160) for m in ("full", "spts") for mode in ("batched", "one by one")
    ]
    by = {(r.length, r.method, r.mode): r for r in rows}
    assert by[160, "spts", "batched"].prompt_lengths == [160, 120, 80]
    for row in rows:
        assert (
            row.batch_size == 3 and row.ttft_median_s > 0 and row.prompts_per_s == pytest.approx(3 / row.ttft_median_s)
        )
        assert row.ttft_median_s < row.e2e_median_s and row.new_tokens == 4
        assert row.same_first_tokens, (row.length, row.method, row.mode)
    assert by[160, "full", "batched"].speedup == 1.0 and by[160, "full", "batched"].kv_fraction == 1.0
    # SPTS's cache over real tokens: 2 full layers, then 0.5 and 0.25 of each row's length.
    expected = sum(2 * n + 2 * -(-n // 2) + 2 * -(-n // 4) for n in (160, 120, 80)) / (6 * 360)
    assert by[160, "spts", "batched"].kv_fraction == pytest.approx(expected)

    write_batch_reports(rows, tmp_path, "tiny llama, CPU")
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("tiny llama, CPU") and table.count("\n| ") == 9  # header row + 8 rows
    assert "| 160 | 3 | 160, 120, 80 | spts | batched |" in table
    assert len(json.loads((tmp_path / "summary.json").read_text())["rows"]) == 8
    assert (tmp_path / "throughput.png").stat().st_size > 0

    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    again = run_batch_bench(model, [96, 160], 3, methods, tmp_path, repeats=2, warmup=1, new_tokens=4, progress=False)
    assert again == rows and (tmp_path / "rows.jsonl").read_text().splitlines() == lines


def test_batch_bench_refusals(tmp_path):
    from typer.testing import CliRunner

    from spts.cli import app

    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match="add full"):
        run_batch_bench(model, [64], 2, resolve_methods("spts", CONFIG), tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        run_batch_bench(model, [64], 1, resolve_methods("full,spts", CONFIG), tmp_path)
    with pytest.raises(ValueError, match="take one prompt"):
        run_batch_bench(model, [64], 2, resolve_methods("full,gemfilter@0.5:L2", CONFIG, model), tmp_path)
    result = CliRunner().invoke(app, ["bench", "--engine", "vllm", "--batch-size", "4", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "only with --engine hf" in " ".join(result.output.replace("│", " ").split())


def test_batch_bench_cli_compares_full_and_spts_by_default_and_says_so(tmp_path):
    from typer.testing import CliRunner

    from spts.cli import app

    args = ["bench", "--model", "smollm2-135m", "--lengths", "48", "--batch-size", "2", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--warmup", "1", "--no-decode", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "table.md").read_text()
    assert "smollm2-135m (random weights)" in table and "batches of 2 left-padded prompts" in table
    assert table.splitlines()[0].endswith("--methods full,spts --batch-size 2 --no-text")
    assert "| 48 | 2 | 48, 24 | spts | batched |" in table
