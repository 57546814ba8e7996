"""benchmarks/match_speed.py: peers at the TTFT speedup of an SPTS schedule, from one bench folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "match_speed.py"


def write_bench(folder: Path, speedups: dict[str, float], length: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"length": length, "method": method, "speedup": speedup} for method, speedup in speedups.items()]
    summary = folder / "summary.json"
    old = json.loads(summary.read_text())["rows"] if summary.exists() else []
    summary.write_text(json.dumps({"rows": old + rows}))
    return folder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_picks_per_family_the_setting_closest_to_each_schedule(tmp_path: Path) -> None:
    bench = write_bench(tmp_path, {
        "full": 1.0, "tuned": 1.5, "tuned2": 2.0, "spts@2": 1.45,
        "fastkv@0.1": 2.1, "fastkv@0.2": 1.6, "fastkv@0.3": 1.3,
        "lazyllm@1": 1.9, "lazyllm@1.5": 1.45, "gemfilter@0.2:L17": 1.2,
    })  # fmt: skip
    result = run(str(bench), "--to", "tuned", "--to", "tuned2")
    assert result.returncode == 0, result.stderr
    # one gemfilter setting serves both schedules, listed once; spts@2 is no peer
    assert result.stdout.strip() == "fastkv@0.2,lazyllm@1.5,gemfilter@0.2:L17,fastkv@0.1,lazyllm@1"
    assert "gemfilter@0.2:L17: 1.20x, matching tuned2 at 2.00x" in result.stderr


def test_matches_at_the_length_asked(tmp_path: Path) -> None:
    write_bench(tmp_path, {"full": 1.0, "tuned": 1.5, "fastkv@0.1": 1.5, "fastkv@0.2": 1.2}, length=4096)
    write_bench(tmp_path, {"full": 1.0, "tuned": 1.5, "fastkv@0.1": 2.0, "fastkv@0.2": 1.5}, length=8192)
    assert run(str(tmp_path), "--to", "tuned", "--length", "8192").stdout.strip() == "fastkv@0.2"
    result = run(str(tmp_path), "--to", "tuned")
    assert result.returncode != 0 and "--length" in result.stderr


def test_refuses_what_it_cannot_match(tmp_path: Path) -> None:
    bench = write_bench(tmp_path / "b", {"full": 1.0, "tuned": 1.5})
    result = run(str(bench), "--to", "tuned")
    assert result.returncode != 0 and "no peer method" in result.stderr
    result = run(str(bench), "--to", "tuned3")
    assert result.returncode != 0 and "timed no tuned3" in result.stderr
    result = run(str(tmp_path / "none"), "--to", "tuned")
    assert result.returncode != 0 and "no summary.json" in result.stderr
