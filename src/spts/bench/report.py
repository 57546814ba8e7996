"""Reports of ``spts bench``: ``summary.json``, ``table.md`` (with the prefill split by layer group) and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from spts.bench.harness import BenchRow


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def write_reports(rows: Sequence[BenchRow], out_dir: Path, header: str) -> None:
    """``summary.json``, ``table.md`` and, when matplotlib is installed, ``speedup.png`` (speedup vs length)
    and ``layer_breakdown.png`` (prefill time per layer group and method, at the longest length)."""
    (out_dir / "summary.json").write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    full = {r.length: r for r in rows if r.method == "full"}

    def ratio(r: BenchRow, field: str) -> float | None:
        base, mine = getattr(full.get(r.length), field, None), getattr(r, field)
        return base / mine if base and mine else None

    lines = [
        header,
        "",
        "| length | method | TTFT (s) | spread (s) | TTFT speedup | E2E16 (s) | E2E16 speedup | E2E128 (s) | "
        "E2E128 speedup | decode (ms/token) | KV cache (MiB) | KV kept | probe share | peak memory (GiB) | "
        "sparse density | estimate share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = r.peak_memory_bytes / 2**30 if r.peak_memory_bytes is not None else None
        lines.append(
            f"| {r.length} | {r.method} | {r.ttft_median_s:.3f} | {r.ttft_spread_s:.3f} | {r.speedup:.2f}x | "
            f"{_fmt(r.e2e_16_s, '.3f')} | {_fmt(ratio(r, 'e2e_16_s'), '.2f', 'x')} | {_fmt(r.e2e_128_s, '.3f')} | "
            f"{_fmt(ratio(r, 'e2e_128_s'), '.2f', 'x')} | {_fmt(r.decode_ms_per_token, '.1f')} | "
            f"{r.kv_cache_bytes / 2**20:.1f} | {r.kv_fraction:.0%} | {r.probe_time_share:.1%} | {_fmt(peak, '.2f')} | "
            f"{_fmt(r.sparse_density, '.0%')} | {_fmt(r.estimate_time_share, '.1%')} |"
        )
    lines += _layer_group_table(rows)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    methods = list(dict.fromkeys(r.method for r in rows))
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in methods:
        points = [(r.length, r.speedup) for r in rows if r.method == method]
        (line,) = axis.plot(*zip(*points, strict=True), marker="o", label=f"{method} TTFT")
        e2e = [(r.length, ratio(r, "e2e_16_s")) for r in rows if r.method == method and ratio(r, "e2e_16_s")]
        if e2e and method != "full":
            axis.plot(*zip(*e2e, strict=True), marker="x", ls="--", color=line.get_color(), label=f"{method} E2E16")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompt tokens")
    axis.set_ylabel("speedup vs full")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / "speedup.png", dpi=120)
    plt.close(figure)

    longest = max(r.length for r in rows)
    split = [r for r in rows if r.length == longest and r.layer_group_seconds]
    if not split:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    bottoms = [0.0] * len(split)
    for group in split[0].layer_group_seconds:
        heights = [r.layer_group_seconds.get(group, 0.0) for r in split]
        axis.bar([r.method for r in split], heights, bottom=bottoms, label=group)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axis.set_ylabel(f"prefill seconds at {longest} tokens")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "layer_breakdown.png", dpi=120)
    plt.close(figure)


def _layer_group_table(rows: Sequence[BenchRow]) -> list[str]:
    """Seconds of one prefill per layer group (the base config's groups), per length and method."""
    split = [r for r in rows if r.layer_group_seconds]
    if not split:
        return []
    groups = list(split[0].layer_group_seconds)
    lines = ["", "Prefill split by layer group (seconds, one untimed prefill per method):", ""]
    lines += ["| length | method | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for r in split:
        cells = " | ".join(f"{r.layer_group_seconds.get(g, 0.0):.2f}" for g in groups)
        lines.append(f"| {r.length} | {r.method} | {cells} |")
    return lines
