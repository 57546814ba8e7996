"""Summaries of an evaluation: mean score per task, length and method, TTFT speedup over the full model
(paired per sample), as JSON, a markdown table and a plot of accuracy against speedup."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _length(row: Row) -> str:
    return str(row["target_tokens"]) if row["target_tokens"] is not None else "native"


def _speedups(rows: Sequence[Row], reference: str) -> dict[tuple[str, str], float]:
    """TTFT of ``reference`` over each row's TTFT, keyed by (sample id, method), where both ran in the same run.

    Rows copied in from another run (another day, another load on the machine) are not timed side by side with
    this run's, so they pair only with rows of their own run; rows written before runs were named pair with
    each other, as they always did."""
    base = {r["sample_id"]: r for r in rows if r["method"] == reference}
    return {
        (r["sample_id"], r["method"]): base[r["sample_id"]]["ttft_s"] / r["ttft_s"]
        for r in rows
        if r["sample_id"] in base and r["ttft_s"] > 0 and r.get("run") == base[r["sample_id"]].get("run")
    }


def summarize(rows: Sequence[Row], reference: str = "full") -> dict[str, Any]:
    """Per (length, task, method): samples, mean score (0-100), median TTFT, median paired speedup; and per
    (length, method) the average over tasks (each task weighs the same, as in LongBench and RULER)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    speedups = _speedups(rows, reference)
    length_of = {r["sample_id"]: _length(r) for r in rows}
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(_length(r), r["task"], r["method"])].append(r)

    def cell(members: list[Row]) -> dict[str, Any]:
        ups = [speedups[(r["sample_id"], r["method"])] for r in members if (r["sample_id"], r["method"]) in speedups]
        return {
            "n": len(members),
            "score": 100 * statistics.fmean(r["score"] for r in members),
            "ttft_median_s": statistics.median(r["ttft_s"] for r in members),
            "speedup": statistics.median(ups) if ups else None,
            "kv_fraction": statistics.fmean(r["kv_fraction"] for r in members),
        }

    cells = [{"length": k[0], "task": k[1], "method": k[2], **cell(v)} for k, v in groups.items()]
    averages = []
    for length in dict.fromkeys(c["length"] for c in cells):
        for method in methods:
            mine = [c for c in cells if c["length"] == length and c["method"] == method]
            if not mine:
                continue
            ups = [s for (sid, m), s in speedups.items() if m == method and length_of[sid] == length]
            averages.append(
                {
                    "length": length,
                    "method": method,
                    "tasks": len(mine),
                    "n": sum(c["n"] for c in mine),
                    "score": statistics.fmean(c["score"] for c in mine),
                    "speedup": statistics.median(ups) if ups else None,
                    "kv_fraction": statistics.fmean(c["kv_fraction"] for c in mine),
                }
            )
    return {"methods": methods, "reference": reference, "cells": cells, "averages": averages}


def _fmt_speedup(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def markdown(summary: dict[str, Any], header: str = "") -> str:
    methods = summary["methods"]
    lines = [header, ""] if header else []
    for length in dict.fromkeys(c["length"] for c in summary["cells"]):
        cells = {(c["task"], c["method"]): c for c in summary["cells"] if c["length"] == length}
        tasks = list(dict.fromkeys(t for t, _ in cells))
        lines += [f"### {length} tokens" if length != "native" else "### native lengths", ""]
        lines += ["| task | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for task in tasks:
            n = max(cells[(task, m)]["n"] for m in methods if (task, m) in cells)
            scores = [f"{cells[(task, m)]['score']:.1f}" if (task, m) in cells else "-" for m in methods]
            lines.append(f"| {task} | {n} | " + " | ".join(scores) + " |")
        averages = {a["method"]: a for a in summary["averages"] if a["length"] == length}

        def row(label: str, fmt, methods=methods, averages=averages) -> str:
            return f"| {label} | | " + " | ".join(fmt(averages[m]) if m in averages else "-" for m in methods) + " |"

        lines.append(row("**average**", lambda a: f"**{a['score']:.1f}**"))
        lines.append(row("TTFT speedup", lambda a: _fmt_speedup(a["speedup"])))
        lines.append(row("KV cache kept", lambda a: f"{a['kv_fraction']:.0%}"))
        lines.append("")
    lines.append(
        "Scores are means over samples (0-100; RULER tasks: fraction of expected strings found, QA: LongBench's "
        "F1). TTFT speedup: median over samples of the full model's prefill time over the method's, measured "
        "back to back on the same prompt in the same run (a dash: never timed in the same run as the full "
        "model; `spts bench` measures speed)."
    )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Average score against TTFT speedup, one marker per method, one panel per length; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lengths = list(dict.fromkeys(a["length"] for a in summary["averages"]))
    figure, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 4), squeeze=False)
    for axis, length in zip(axes[0], lengths, strict=True):
        for a in (a for a in summary["averages"] if a["length"] == length):
            axis.scatter(a["speedup"] or 1.0, a["score"], s=40)
            axis.annotate(a["method"], (a["speedup"] or 1.0, a["score"]), textcoords="offset points", xytext=(4, 4))
        axis.set_title(f"{length} tokens")
        axis.set_xlabel("TTFT speedup vs full")
        axis.set_ylabel("average score")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_reports(rows: Sequence[Row], out_dir: str | Path, header: str = "") -> dict[str, Any]:
    """``summary.json``, ``table.md`` and ``accuracy_vs_speedup.png`` in ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    summary = summarize(rows)
    (out_dir / "summary.json").write_text(json.dumps({"header": header, **summary}, indent=2))
    (out_dir / "table.md").write_text(markdown(summary, header))
    plot(summary, out_dir / "accuracy_vs_speedup.png")
    return summary
