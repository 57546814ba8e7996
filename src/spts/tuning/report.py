"""What ``spts tune`` writes: ``tuned.json`` (the chosen config, for ``spts.enable``), ``summary.json``,
``table.md`` (the chosen config, its score on the held-out family, the top configs per family and length) and
``frontier.png`` (quality against predicted speedup, Pareto frontier, chosen point)."""

from __future__ import annotations

import importlib.metadata
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spts.config import SPTSConfig
from spts.machine import machine
from spts.tuning.quality import ANSWERED_MIN, describe_objective
from spts.tuning.space import describe

TUNED_FILE = "tuned.json"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"
FRONTIER_FILE = "frontier.png"

FIDELITY_DEFINITION = (
    "per prompt: 0.5 x [the config's first token = the full model's] + 0.5 x share of the later tokens of the full "
    "model's greedy answer (up to 16, stop token included) that the config's teacher-forced argmax reproduces; "
    "the first token alone for one-token answers; mean over prompts"
)

__all__ = ["FIDELITY_DEFINITION", "build_summary", "describe", "environment", "write_outputs"]


def environment() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "spts": version("spts"),
    }


def build_summary(*, chosen: str, configs: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Everything the reports show, JSON-ready; ``configs`` are the searched configs at the last rung each
    reached, best first within a rung."""
    settings = fields.pop("settings")
    target = fields.pop("target")
    return {
        **environment(),
        **fields,
        "target": {"kind": target.kind, "value": target.value, "description": target.describe()},
        "settings": {k: _jsonable(v) for k, v in settings.__dict__.items()},
        "fidelity_definition": FIDELITY_DEFINITION,
        "objective_definition": describe_objective(
            fields.get("objective", "fidelity"), getattr(settings, "answered_min", ANSWERED_MIN)
        ),
        "chosen": chosen,
        "configs": sorted(configs, key=lambda c: -c["prompts"]),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def write_outputs(out_dir: Path, summary: dict[str, Any], chosen: SPTSConfig, model: nn.Module) -> None:
    chosen_row = next(c for c in summary["configs"] if c["fingerprint"] == summary["chosen"])
    measured = chosen_row.get("measured") or {}
    chosen.to_file(
        out_dir / TUNED_FILE,
        model=model,
        metadata={
            "target": summary["target"],
            "target_met": summary["target_met"],
            "fidelity": chosen_row["fidelity"],
            "fidelity_definition": FIDELITY_DEFINITION,
            "objective": summary.get("objective", "fidelity"),
            "quality": chosen_row.get("quality", chosen_row["fidelity"]),
            "score_retention": chosen_row.get("retention"),
            "families": {f: v.get("quality") for f, v in (chosen_row.get("families") or {}).items()},
            "holdout_retention": _holdout_retention(summary),
            "prompts": chosen_row["prompts"],
            "length": summary["settings"]["length"],
            "lengths": summary.get("lengths", [summary["settings"]["length"]]),
            "predicted_speedup": chosen_row["predicted_speedup"],
            "measured_speedup": measured.get("measured_speedup"),
            "kv_fraction": chosen_row["kv_fraction"],
            "ffn_policy": summary["ffn_policy"],
            "model": summary["model_name"],
            "device": summary["device"],
            "machine": summary["machine"],
            "date": summary["date"],
            "command": summary["command"],
        },
    )
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / TABLE_FILE).write_text(markdown(summary))
    plot_frontier(summary, out_dir / FRONTIER_FILE)


def _prompts(n: int) -> str:
    return f"{n} prompt{'s' if n != 1 else ''}"


def _measured(config_row: dict[str, Any]) -> str:
    value = (config_row.get("measured") or {}).get("measured_speedup")
    return f"{value:.2f}x" if value is not None else "-"


def _holdout_retention(summary: dict[str, Any]) -> dict[str, Any] | None:
    held = summary.get("holdout")
    if not held:
        return None
    return {"overall": held["overall"].get("retention"), **{f: v.get("retention") for f, v in held["families"].items()}}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _quality(row: dict[str, Any]) -> float:
    return row.get("quality", row["fidelity"])


def _lengths(summary: dict[str, Any]) -> list[int]:
    return summary.get("lengths") or [summary["settings"]["length"]]


def markdown(summary: dict[str, Any], top: int = 15) -> str:
    configs = summary["configs"]
    chosen = next(c for c in configs if c["fingerprint"] == summary["chosen"])
    most = max(c["prompts"] for c in configs)
    final = [c for c in configs if c["prompts"] == most]
    space = summary["space"]
    objective = summary.get("objective", "fidelity")
    definition = describe_objective(objective, summary["settings"].get("answered_min", ANSWERED_MIN))
    lengths = _lengths(summary)
    families = list(chosen.get("families") or {})
    counts = {
        f: f"{v['prompts']}" + (f" ({v['answered']} answered)" if "answered" in v else "")
        for f, v in (chosen.get("families") or {}).items()
    }
    held = summary.get("holdout_tasks") or []
    lines = [
        f"# spts tune: {summary['model_name']}",
        "",
        f"{summary['date']}, {summary['machine']}, device {summary['device']}, {summary['dtype']}; torch "
        f"{summary['torch']}, transformers {summary['transformers']}, spts {summary['spts']}; FFN policy "
        f"{summary['ffn_policy']}.",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Target: {summary['target']['description']}"
        + (f" at every length ({', '.join(map(str, lengths))} tokens)" if len(lengths) > 1 else "")
        + f". Objective: **{objective}** ({definition}). Prompts: {len(summary['prompts'])} of "
        f"~{'/'.join(map(str, lengths))} tokens"
        + (f" ({', '.join(f'{f}: {n}' for f, n in counts.items())} on the chosen config's rung)" if counts else "")
        + (f"; held out of calibration: {', '.join(held)}" if held else "")
        + ".",
        "",
        f"**Chosen** (`{chosen['fingerprint']}`, in `tuned.json`): {chosen['description']}. Quality "
        f"{_quality(chosen):.3f} ({objective}), fidelity {chosen['fidelity']:.3f} over {_prompts(chosen['prompts'])}"
        + (f", score retention {_pct(chosen.get('retention'))}" if chosen.get("score") is not None else "")
        + f", predicted TTFT speedup {chosen['predicted_speedup']:.2f}x"
        + _per_length(chosen.get("predicted_by_length"), lengths)
        + f", measured {_measured(chosen)}{_per_length(_measured_by_length(chosen), lengths)}, KV cache kept "
        f"{chosen['kv_fraction']:.0%}."
        + ("" if summary["target_met"] else " **Target not met.**"),
        "",
        *_selection_lines(summary),
        *_holdout_lines(summary),
        f"Search: {space['valid']} valid configs ({space['invalid']} invalid combinations skipped, "
        f"{space['duplicates']} duplicates), {space['meeting_target']} meeting the speed target, {space['searched']} "
        "searched; successive halving: "
        + ", ".join(f"{r['configs']} configs on {_prompts(r['prompts'])}" for r in summary["rungs"])
        + ".",
        "",
        f"Top configs on all {_prompts(most)}, best first for the target (per family: its quality; "
        "retention: the config's task score over the full model's):",
        "",
        "| # | fingerprint | config | quality | " + "".join(f"{f} | " for f in families)
        + "fidelity | score retention | first token | logprob gap | predicted speedup | measured speedup | KV kept |",
        "|---|---|---|---|" + "---|" * len(families) + "---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for rank, c in enumerate(final[:top], start=1):
        mark = " **(chosen)**" if c["fingerprint"] == summary["chosen"] else ""
        per_family = "".join(f"{_fmt((c.get('families') or {}).get(f, {}).get('quality'))} | " for f in families)
        lines.append(
            f"| {rank} | `{c['fingerprint']}`{mark} | {c['description']} | {_quality(c):.3f} | {per_family}"
            f"{c['fidelity']:.3f} | {_pct(c.get('retention'))} | {c['first_token']:.0%} | {c['logprob_gap']:.3f} | "
            f"{c['predicted_speedup']:.2f}x | {_measured(c)} | {c['kv_fraction']:.0%} |"
        )
    if len(lengths) > 1:
        lines += ["", "The same configs by prompt length (quality, score retention, predicted speedup, KV kept):", ""]
        lines.append("| # | fingerprint | " + "".join(f"{n}: quality | retention | speedup | KV | " for n in lengths))
        lines.append("|---|---|" + "---|---|---|---|" * len(lengths))
        for rank, c in enumerate(final[:top], start=1):
            cells = ""
            for n in lengths:
                stats = (c.get("lengths") or {}).get(str(n), {})
                speed = (c.get("predicted_by_length") or {}).get(str(n))
                kv = (c.get("kv_by_length") or {}).get(str(n))
                cells += (f"{_fmt(stats.get('quality'))} | {_pct(stats.get('retention'))} | "
                          f"{'-' if speed is None else f'{speed:.2f}x'} | {_pct(kv)} | ")  # fmt: skip
            lines.append(f"| {rank} | `{c['fingerprint']}` | {cells}")
    lines += [
        "",
        f"Quality ({objective}): {definition}. Fidelity: {FIDELITY_DEFINITION}. Task scores: "
        "each config's own greedy answer (to the task's answer budget) graded by the task's metric, as spts eval "
        "grades it. Logprob gap: mean per answer token of the full model's log-probability minus the config's. "
        "Predicted speedup: the calibrated per-layer cost model (speed_model.json), the smallest over the lengths; "
        "measured: median of interleaved timed prefills of random tokens at each length, full vs config, in this run "
        "(the smallest over the lengths; CPU timings vary by ~10% between runs).",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _measured_by_length(row: dict[str, Any]) -> dict[str, float] | None:
    by_length = (row.get("measured") or {}).get("by_length")
    return {k: v["measured_speedup"] for k, v in by_length.items()} if by_length else None


def _per_length(values: dict[str, float] | None, lengths: list[int]) -> str:
    if not values or len(lengths) < 2:
        return ""
    return " (" + ", ".join(f"{n}: {values[str(n)]:.2f}x" for n in lengths if str(n) in values) + ")"


def _selection_lines(summary: dict[str, Any]) -> list[str]:
    selection = summary.get("prompt_selection")
    if not selection:
        return []
    drawn = "; ".join(f"{key} {c['kept']} of {c['drawn']}" for key, c in selection["drawn"].items())
    given_up = selection["exhausted"]
    return [
        f"**Calibration prompts the full model answers** (task score >= {selection['answered_min']:g}), kept of drawn "
        f"per task and length: {drawn}."
        + (f" Given up ({selection['max_misses']} misses in a row): {', '.join(given_up)}." if given_up else ""),
        "",
    ]


def _holdout_lines(summary: dict[str, Any]) -> list[str]:
    held = summary.get("holdout")
    if not held:
        return []
    n = held["overall"]["prompts"]
    lines = [
        f"**Held out of calibration** ({', '.join(held['tasks'])}): the chosen schedule and the full model on {n} "
        "development prompts of tasks no calibration prompt came from (the tuner's seed, never spts eval's), graded by "
        f"each task's metric. {n} prompts move retention by a prompt's worth: confirm with spts eval.",
        "",
        "| held out | prompts | full model | chosen | retention | fidelity |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, stats: dict[str, Any]) -> str:
        return (f"| {label} | {stats['prompts']} | {100 * stats['full_score']:.1f} | {100 * stats['score']:.1f} | "
                f"{_pct(stats.get('retention'))} | {stats['fidelity']:.3f} |")  # fmt: skip

    lines.append(row("**all**", held["overall"]))
    lines += [row(f"family {name}", stats) for name, stats in held["families"].items()]
    lines += [row(name, stats) for name, stats in held["by_task"].items()]
    if len(held["lengths"]) > 1:
        lines += [row(f"{name} tokens", stats) for name, stats in held["lengths"].items()]
    return [*lines, ""]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both speedup (x) and quality (y), by increasing speedup."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier[::-1]


def plot_frontier(summary: dict[str, Any], path: Path) -> bool:
    """Quality against predicted speedup for every config scored on the most prompts; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = summary["configs"]
    most = max(c["prompts"] for c in configs)
    final = [c for c in configs if c["prompts"] == most]
    points = [(c["predicted_speedup"], _quality(c)) for c in final]
    figure, axis = plt.subplots(figsize=(6, 4.2))
    axis.scatter(*zip(*points, strict=True), s=22, color="tab:blue", alpha=0.7, label=f"configs ({most} prompts)")
    frontier = pareto(points)
    axis.plot(*zip(*frontier, strict=True), drawstyle="steps-pre", color="tab:orange", label="Pareto frontier")
    chosen = next(c for c in final if c["fingerprint"] == summary["chosen"])
    axis.scatter([chosen["predicted_speedup"]], [_quality(chosen)], marker="*", s=220, color="tab:red",
                 zorder=3, label="chosen")  # fmt: skip
    target = summary["target"]
    if target["kind"] == "speedup":
        axis.axvline(target["value"], color="grey", ls="--", lw=1, label="target speedup")
    else:
        axis.axhline(target["value"], color="grey", ls="--", lw=1, label="target quality")
    axis.set_xlabel("predicted TTFT speedup vs full")
    objective = summary.get("objective", "fidelity")
    axis.set_ylabel("fidelity to the full model's answer" if objective == "fidelity" else f"quality ({objective})")
    axis.set_ylim(-0.03, 1.03)
    axis.set_title(f"{summary['model_name']}, ~{'/'.join(map(str, _lengths(summary)))} tokens", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
