"""Issue 30's table: does a schedule keep the answers on every prompt family, and on every task of each?

    R=benchmarks/results
    python benchmarks/transfer_table.py --out $R/transfer_qwen0.5b_4k \
        --run qwen2.5-coder-0.5b@4096=$R/transfer_eval_qwen0.5b_4096:$R/transfer_bench_qwen0.5b_4096 --against tuned

Each ``--run NAME=EVAL_DIR[+EVAL_DIR...][:BENCH_DIR]`` gives an ``spts eval`` folder whose methods (``full`` among
them) answered the same prompts of both families (several folders, e.g. two seeds' prompts, are pooled: every
interval resamples their prompts together, the speed column shows each folder's paired speedup in order), and
optionally the ``spts bench`` folder that timed the same method names side by side (its TTFT speedups are the speed
column; else the eval's paired speedup, marked). Tasks named ``lbf_*`` are
the LongBench-format family, every other generated task the RULER/QA family. Only samples every method answered
count. Per method: its share of the full model's score on each family and on each task, with 95% paired-bootstrap
intervals (the same samples drawn for the method and the full model); with ``--against M``, M's score minus every
other method's per family, in points, with its interval. Per task, the answers behind those ratios: how many prompts
the full model answers (score >= 0.5, the tuner's ``answered`` rule), how many of those each method keeps, how many
the full model misses that the method answers, and how many answers are the full model's word for word. Writes
``rows.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from size_curve import difference_interval, parse_run, read_scores, retention_interval

from spts.machine import machine
from spts.tuning.quality import ANSWERED_MIN

FAMILIES = ("RULER/QA generators", "LongBench-format")


def family_of(task: str) -> str:
    return FAMILIES[1] if task.startswith("lbf_") else FAMILIES[0]


def _retention(by_sample: dict[str, dict[str, float]], method: str) -> dict:
    full = float(np.mean([s["full"] for s in by_sample.values()]))
    mine = float(np.mean([s[method] for s in by_sample.values()]))
    low, high = retention_interval(by_sample, method) if full > 0 else (float("nan"), float("nan"))
    return {"n": len(by_sample), "full": 100 * full, "score": 100 * mine,
            "retention": mine / full if full > 0 else float("nan"), "retention_95": [low, high]}  # fmt: skip


def _answers(by_sample: dict[str, dict[str, float]], words: dict[str, dict[str, str]], method: str) -> dict:
    answered = [s for s in by_sample.values() if s["full"] >= ANSWERED_MIN]
    return {"full_answers": len(answered), "kept": sum(s[method] >= ANSWERED_MIN for s in answered),
            "gained": sum(s[method] >= ANSWERED_MIN > s["full"] for s in by_sample.values()),
            "identical": sum(words[sid][method].strip() == words[sid]["full"].strip() for sid in by_sample),
            "prompts": len(by_sample)}  # fmt: skip


def _pooled(eval_dirs: list[str], field: str) -> dict[str, dict]:
    """Every folder's per-sample ``field`` by method; with several folders (seeds), each sample id gets its folder's
    index after the task, length and sample index the table reads from it."""
    if len(eval_dirs) == 1:
        return read_scores(Path(eval_dirs[0]), field)
    return {f"{sid}@{i}": s for i, d in enumerate(eval_dirs) for sid, s in read_scores(Path(d), field).items()}


def read_run(spec: str, against: list[str]) -> dict:
    name, _, folders = spec.partition("=")
    eval_part, _, bench_dir = folders.partition(":")
    eval_dirs = eval_part.split("+")
    for eval_dir in eval_dirs:
        parse_run(f"{name}={eval_dir}" + (f":{bench_dir}" if bench_dir else ""))  # refuses missing folders
    averages = [json.loads((Path(d) / "summary.json").read_text())["averages"] for d in eval_dirs]
    methods = [m for m in dict.fromkeys(a["method"] for a in averages[0]) if all(
        any(a["method"] == m for a in folder) for folder in averages)]  # fmt: skip
    if "full" not in methods:
        raise SystemExit(f"{eval_part} has no 'full' rows to compare with (in every folder)")
    # one paired speedup per folder: pooling medians of different prompt sets would hide which is which
    speedups = {m: [next(a["speedup"] for a in folder if a["method"] == m) for folder in averages] for m in methods}
    source = dict.fromkeys(methods, "eval (paired)")
    if bench_dir:
        for row in json.loads((Path(bench_dir) / "summary.json").read_text())["rows"]:
            if row["method"] in speedups:
                speedups[row["method"]], source[row["method"]] = [row["speedup"]], "bench"
    words = _pooled(eval_dirs, "prediction")
    complete = {sid: s for sid, s in _pooled(eval_dirs, "score").items() if set(methods) <= s.keys()}
    if not complete:
        raise SystemExit(f"{eval_part}: no sample was answered by every method ({', '.join(methods)})")
    tasks = sorted({sid.split("/")[0] for sid in complete}, key=lambda t: (family_of(t) != FAMILIES[0], t))
    groups = {
        **{f: {k: v for k, v in complete.items() if family_of(k.split("/")[0]) == f} for f in FAMILIES},
        **{t: {k: v for k, v in complete.items() if k.split("/")[0] == t} for t in tasks},
    }
    groups = {g: s for g, s in groups.items() if s}
    rows = []
    for method in methods:
        row = {"method": method, "speedups": speedups[method], "speedup_source": source[method], "groups": {}}
        for group, samples in groups.items():
            entry = _retention(samples, method)
            entry["minus"] = {
                ref: difference_interval(samples, ref, method) for ref in against if ref in methods and ref != method
            }
            entry["answers"] = _answers(samples, words, method)
            row["groups"][group] = entry
        rows.append(row)
    lengths = sorted({int(sid.split("/")[1]) for sid in complete})
    return {"run": name, "eval_dirs": eval_dirs, "bench_dir": bench_dir or None, "lengths": lengths,
            "families": [f for f in FAMILIES if f in groups], "tasks": tasks, "methods": rows}  # fmt: skip


def _cell(method: dict, group: str) -> str:
    """The full model's score, or another method's share of it with its interval."""
    entry = method["groups"][group]
    if method["method"] == "full":
        return f"{entry['score']:.1f}"
    if np.isnan(entry["retention"]):
        return "-"
    low, high = entry["retention_95"]
    return f"{entry['retention']:.0%} ({low:.0%}-{high:.0%})"


def table(runs: list[dict], command: str, against: list[str]) -> str:
    lines = [
        "# Quality across prompt families",
        "",
        f"Built {datetime.now(UTC):%Y-%m-%d} on {machine()} from the eval and bench folders named below (their own "
        f"tables give the machine and date each was measured on). Command: `{command}`",
        "",
        "Kept = the method's mean score over the full model's on the same samples; 95% paired-bootstrap interval in "
        "brackets. Only samples every method answered count.",
    ]
    for run in runs:
        sizes = {g: e["n"] for g, e in run["methods"][0]["groups"].items()}
        lines += [
            "",
            f"## {run['run']} ({', '.join(f'`{d}`' for d in [*run['eval_dirs'], run['bench_dir']] if d)})",
            "",
            "| method | TTFT speedup | " + " | ".join(f"{f} ({sizes[f]})" for f in run["families"]) + " |",
            "|---|---|" + "---|" * len(run["families"]),
        ]
        for m in run["methods"]:
            known = [f"{v:.2f}x" if v is not None else "-" for v in m["speedups"]]
            speed = "-" if all(v is None for v in m["speedups"]) else "/".join(known) + (
                "" if m["speedup_source"] == "bench" else " (eval)")  # fmt: skip
            lines.append(f"| {m['method']} | {speed} | " + " | ".join(_cell(m, f) for f in run["families"]) + " |")
        lines += [
            "",
            "Per task (full: its score; others: kept of full):",
            "",
            "| method | " + " | ".join(f"{t} ({sizes[t]})" for t in run["tasks"]) + " |",
            "|---|" + "---|" * len(run["tasks"]),
        ]
        for m in run["methods"]:
            lines.append(f"| {m['method']} | " + " | ".join(_cell(m, t) for t in run["tasks"]) + " |")
        lines += [
            "",
            f"Answers per task (score >= {ANSWERED_MIN:g}): of the prompts the full model answers, how many each "
            "method keeps; + those it answers that the full model misses; identical: answers word for word the full "
            "model's.",
            "",
            "| method | " + " | ".join(run["tasks"]) + " |",
            "|---|" + "---|" * len(run["tasks"]),
        ]
        for m in (m for m in run["methods"] if m["method"] != "full"):
            counts = [m["groups"][t]["answers"] for t in run["tasks"]]
            lines.append(f"| {m['method']} | " + " | ".join(
                f"{c['kept']} of {c['full_answers']}, +{c['gained']}; {c['identical']} of {c['prompts']} identical"
                for c in counts) + " |")  # fmt: skip
        for ref in against:
            first = run["families"][0]
            pairs = [(m["method"], m["groups"]) for m in run["methods"] if ref in m["groups"][first]["minus"]]
            if not pairs:
                continue
            lines += [
                "",
                f"{ref} minus each method, points (95% paired-bootstrap interval):",
                "",
                "| method | " + " | ".join(run["families"]) + " |",
                "|---|" + "---|" * len(run["families"]),
            ]
            for name, groups in pairs:
                cells = []
                for f in run["families"]:
                    d, low, high = groups[f]["minus"][ref]
                    cells.append(f"{d:+.1f} ({low:+.1f} to {high:+.1f})")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, help="NAME=EVAL_DIR[+EVAL_DIR...][:BENCH_DIR] (repeatable)"
    )
    parser.add_argument("--against", action="append", default=[], help="method whose differences to report")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    command = "python benchmarks/transfer_table.py " + " ".join(
        [f"--out {args.out}", *(f"--run {r}" for r in args.run), *(f"--against {a}" for a in args.against)]
    )
    runs = [read_run(spec, args.against) for spec in args.run]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(runs, indent=2) + "\n")
    (args.out / "table.md").write_text(table(runs, command, args.against))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
