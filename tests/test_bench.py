"""The prefill benchmark runs end to end on a tiny model, writes every output and resumes."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_model
from spts import SPTSConfig
from spts.bench import SHAPES, random_model, run_bench, write_reports

CONFIG = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)


def test_bench_writes_every_figure_for_every_method_and_length(tmp_path):
    model = tiny_model("llama")
    rows = run_bench(model, CONFIG, [64, 128], tmp_path, repeats=3, warmup=1, progress=False)
    assert [(r.length, r.method) for r in rows] == [
        (n, m) for n in (64, 128) for m in ("full", "pap", "pap+ffn", "spts", "ceiling")
    ]
    for row in rows:
        assert row.ttft_median_s > 0 and row.speedup > 0 and row.kv_cache_bytes > 0
        assert row.peak_memory_bytes is None  # CPU
        # TTFT and E2E come from separate timed runs, so only E2E's marks (one generation) are ordered for sure.
        assert row.ttft_median_s > 0 and 0 < row.e2e_16_s < row.e2e_128_s and row.decode_ms_per_token > 0
        groups = row.layer_group_seconds
        assert list(groups) == [
            "layers 0-1 (full)", "stage 0: layers 2-3", "stage 1: layers 4-5", "embedding, norm, LM head",
        ]  # fmt: skip
        assert all(v >= 0 for v in groups.values()) and groups["stage 1: layers 4-5"] > 0
    by_method = {(r.length, r.method): r for r in rows}
    assert by_method[(128, "full")].kv_fraction == 1.0 and by_method[(128, "full")].speedup == 1.0
    assert by_method[(128, "spts")].kv_cache_bytes < by_method[(128, "full")].kv_cache_bytes
    assert 0 < by_method[(128, "spts")].probe_time_share < 1
    assert by_method[(128, "ceiling")].probe_time_share == 0  # free selection: no probe
    assert by_method[(128, "ceiling")].kv_cache_bytes == by_method[(128, "spts")].kv_cache_bytes

    write_reports(rows, tmp_path, "tiny llama, CPU")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["rows"]) == 10
    # header row + 10 rows, then the prefill split by layer group: header row + 10 rows
    assert (tmp_path / "table.md").read_text().count("\n| ") == 11 + 11
    assert (tmp_path / "speedup.png").stat().st_size > 0
    assert (tmp_path / "layer_breakdown.png").stat().st_size > 0
    assert "| 128 | spts |" in (tmp_path / "table.md").read_text()

    # Resuming: finished rows are read back, not measured again.
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    again = run_bench(model, CONFIG, [64, 128], tmp_path, repeats=3, warmup=1, progress=False)
    assert again == rows
    assert (tmp_path / "rows.jsonl").read_text().splitlines() == lines


def test_random_model_shapes():
    model = random_model("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert set(SHAPES) >= {"llama-3.1-8b", "qwen2.5-7b", "qwen2.5-0.5b"}
    with pytest.raises(ValueError, match="unknown model shape 'gpt-9'"):
        random_model("gpt-9")


def test_bench_without_decode_timing(tmp_path):
    rows = run_bench(tiny_model("qwen2"), CONFIG, [64], tmp_path, repeats=1, warmup=0, progress=False, decode=False)
    assert all(r.e2e_16_s is None and r.decode_ms_per_token is None for r in rows)
    write_reports(rows, tmp_path, "no decode")
    assert "| 64 | spts |" in (tmp_path / "table.md").read_text()


def test_bench_decoding_through_the_model_own_step(tmp_path):
    rows = run_bench(tiny_model("qwen3"), CONFIG, [64], tmp_path, repeats=1, warmup=0, progress=False,
                     static_decode=False)  # fmt: skip
    assert all(r.ttft_median_s > 0 and 0 < r.e2e_16_s < r.e2e_128_s and r.decode_ms_per_token > 0 for r in rows)


def test_bench_cli_records_the_full_command(tmp_path):
    from typer.testing import CliRunner

    from spts.cli import app

    args = ["bench", "--model", "smollm2-135m", "--lengths", "32", "--repeats", "1", "--warmup", "0", "--no-decode"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    header = (tmp_path / "table.md").read_text().splitlines()[0]
    assert "random weights" in header and "prefill only" in header
    assert header.endswith(
        f"Command: spts bench --model smollm2-135m --lengths 32 --out {tmp_path} --repeats 1 --warmup 0 "
        "--random-weights --no-ltp --no-decode --static-decode --engine hf --methods full,pap,pap+ffn,spts,ceiling "
        "--batch-size 1 --no-text"
    )


def test_bench_cli_default_methods_are_the_harness_ablations_and_vllm_refuses_others(tmp_path):
    from typer.testing import CliRunner

    from spts.bench.harness import ABLATIONS
    from spts.cli import app
    from spts.cli.bench import BENCH_METHODS

    assert BENCH_METHODS == ABLATIONS
    result = CliRunner().invoke(app, ["bench", "--engine", "vllm", "--methods", "full,spts", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--methods applies to --engine hf" in result.output
