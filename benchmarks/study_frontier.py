"""Issue 16's study per model: each method's share of the full model's score against its TTFT speedup.

    R=benchmarks/results
    python benchmarks/study_frontier.py --out $R/study_frontier_4k \
        --run smollm2-135m=$R/study_smollm2_4k:$R/bench_cpu_smollm2_study \
        --run qwen2.5-coder-0.5b=$R/study_qwen2.5-coder-0.5b_4k:$R/bench_cpu_qwen0.5b_study

Each ``--run NAME=EVAL_DIR[:BENCH_DIR]`` gives an ``spts eval`` folder in which every method answered the same
prompts (``full`` among them; one prompt length) and the ``spts bench`` folder that timed the same method names
side by side. An eval folder whose rows were copied from several runs (``--copy-from``) has no paired TTFT for
every method, so the speed axis is the bench's; a method the bench did not time falls back to the eval's paired
speedup, marked as such, and is left off the plot when it has none. Writes ``rows.json``, ``table.md`` (the table
the README quotes) and ``accuracy_vs_speedup.png`` (one panel per model, 95% paired-bootstrap intervals).
``--against METHOD`` (repeatable) adds, for each run that holds it, METHOD's score minus every other method's on
the same samples, in points with a 95% paired-bootstrap interval: the differences the docs quote.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from size_curve import interval_bars, read_study

from spts.machine import machine


def table(studies: list[dict], command: str, against: list[str]) -> list[str]:
    lines = [
        "# Accuracy at speed, per model",
        "",
        f"Built {datetime.now(UTC):%Y-%m-%d} on {machine()} from the eval and bench folders below (their own tables "
        f"give the machine and date each was measured on). Command: `{command}`",
    ]
    for study in studies:
        lines += [
            "",
            f"## {study['model']}, {study['length']} tokens",
            "",
            "| method | samples | score | kept of full (95% interval) | TTFT speedup | KV kept |",
            "|---|---|---|---|---|---|",
        ]
        for m in sorted(study["methods"], key=lambda m: (m["method"] != "full", -m["score"])):
            low, high = m["retention_95"]
            speed = "-" if m["speedup"] is None else f"{m['speedup']:.2f}x"
            if m["speedup"] is not None and m["speedup_source"] != "bench":
                speed += " (eval)"
            kv = "-" if m["kv_fraction"] is None else f"{m['kv_fraction']:.0%}"
            lines.append(
                f"| {m['method']} | {m['n']} | {m['score']:.1f} | {m['retention']:.0%} ({low:.0%}-{high:.0%}) | "
                f"{speed} | {kv} |"
            )
        for reference in against:
            differences = [(m["method"], m["minus"][reference]) for m in study["methods"] if reference in m["minus"]]
            if not differences:
                continue
            lines += [
                "",
                f"{reference} minus each method, points (0-100) over the same samples (95% paired-bootstrap interval):",
                "",
                "| method | difference (95% interval) |",
                "|---|---|",
            ]
            lines += [f"| {name} | {d:+.1f} ({low:+.1f} to {high:+.1f}) |" for name, (d, low, high) in differences]
        lines += ["", f"Sources: `{study['eval_dir']}`, `{study['bench_dir']}`."]
    lines += [
        "",
        "Score: the eval's mean over tasks (0-100). Kept of full: the method's score over the full model's on the "
        "same prompts; the interval is a paired bootstrap over samples. TTFT speedup: the bench's median, measured "
        "side by side; (eval): the eval's paired median, where the bench did not time the method.",
    ]
    return lines


def plot(studies: list[dict], path: Path, targets: list[float]) -> None:
    figure, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 4.2), squeeze=False)
    for axis, study in zip(axes[0], studies, strict=True):
        for m in study["methods"]:
            if m["speedup"] is None:
                continue
            below, above = interval_bars(m)
            axis.errorbar(m["speedup"], 100 * m["retention"], yerr=[[below], [above]], marker="o", capsize=3,
                          label=m["method"])  # fmt: skip
        for target in targets:
            axis.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("TTFT speedup (x)")
        axis.set_ylabel("score kept, % of the full model")
        axis.set_title(f"{study['model']}, {study['length']} tokens", fontsize=10)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=EVAL_DIR[:BENCH_DIR], repeatable")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, action="append", help="%% of the full score to mark (default: 95)")
    parser.add_argument(
        "--against", action="append", default=[], help="a method to compare every other with (paired), repeatable"
    )
    args = parser.parse_args()
    studies = [read_study(spec, args.against) for spec in args.run]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(studies, indent=2))
    options = [f"--run {s}" for s in args.run] + [f"--target {t:g}" for t in args.target or []]
    options += [f"--against {a}" for a in args.against]
    command = f"python benchmarks/study_frontier.py {' '.join(options)} --out {args.out}"
    lines = table(studies, command, args.against)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    plot(studies, args.out / "accuracy_vs_speedup.png", args.target or [95.0])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
