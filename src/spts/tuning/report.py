"""What ``spts tune`` writes: ``tuned.json`` (the chosen config, for ``spts.enable``), ``summary.json``,
``table.md`` and ``frontier.png`` (fidelity against predicted speedup, Pareto frontier, chosen point)."""

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
            "prompts": chosen_row["prompts"],
            "length": summary["settings"]["length"],
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


def markdown(summary: dict[str, Any], top: int = 15) -> str:
    configs = summary["configs"]
    chosen = next(c for c in configs if c["fingerprint"] == summary["chosen"])
    most = max(c["prompts"] for c in configs)
    final = [c for c in configs if c["prompts"] == most]
    space = summary["space"]
    lines = [
        f"# spts tune: {summary['model_name']}",
        "",
        f"{summary['date']}, {summary['machine']}, device {summary['device']}, {summary['dtype']}; torch "
        f"{summary['torch']}, transformers {summary['transformers']}, spts {summary['spts']}; FFN policy "
        f"{summary['ffn_policy']}.",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Target: {summary['target']['description']}. Prompts: {len(summary['prompts'])} of "
        f"~{summary['settings']['length']} tokens.",
        "",
        f"**Chosen** (`{chosen['fingerprint']}`, in `tuned.json`): {chosen['description']}. Fidelity "
        f"{chosen['fidelity']:.3f} over {_prompts(chosen['prompts'])}, predicted TTFT speedup "
        f"{chosen['predicted_speedup']:.2f}x, measured {_measured(chosen)}, KV cache kept {chosen['kv_fraction']:.0%}."
        + ("" if summary["target_met"] else " **Target not met.**"),
        "",
        f"Search: {space['valid']} valid configs ({space['invalid']} invalid combinations skipped, "
        f"{space['duplicates']} duplicates), {space['meeting_target']} meeting the speed target, {space['searched']} "
        "searched; successive halving: "
        + ", ".join(f"{r['configs']} configs on {_prompts(r['prompts'])}" for r in summary["rungs"])
        + ".",
        "",
        f"Top configs on all {_prompts(most)}, best first for the target:",
        "",
        "| # | fingerprint | config | fidelity | first token | token agreement | logprob gap | predicted speedup "
        "| measured speedup | KV kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, c in enumerate(final[:top], start=1):
        mark = " **(chosen)**" if c["fingerprint"] == summary["chosen"] else ""
        lines.append(
            f"| {rank} | `{c['fingerprint']}`{mark} | {c['description']} | {c['fidelity']:.3f} | "
            f"{c['first_token']:.0%} | {c['token_agreement']:.0%} | {c['logprob_gap']:.3f} | "
            f"{c['predicted_speedup']:.2f}x | {_measured(c)} | {c['kv_fraction']:.0%} |"
        )
    lines += [
        "",
        f"Fidelity: {FIDELITY_DEFINITION}. Logprob gap: mean per answer token of the full model's log-probability "
        "minus the config's. Predicted speedup: the calibrated per-layer cost model (speed_model.json) at the target "
        "length; measured: median of interleaved timed prefills of random tokens at that length, full vs config, in "
        "this run (CPU timings vary by ~10% between runs).",
    ]
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both speedup (x) and fidelity (y), by increasing speedup."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier[::-1]


def plot_frontier(summary: dict[str, Any], path: Path) -> bool:
    """Fidelity against predicted speedup for every config scored on the most prompts; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    configs = summary["configs"]
    most = max(c["prompts"] for c in configs)
    final = [c for c in configs if c["prompts"] == most]
    points = [(c["predicted_speedup"], c["fidelity"]) for c in final]
    figure, axis = plt.subplots(figsize=(6, 4.2))
    axis.scatter(*zip(*points, strict=True), s=22, color="tab:blue", alpha=0.7, label=f"configs ({most} prompts)")
    frontier = pareto(points)
    axis.plot(*zip(*frontier, strict=True), drawstyle="steps-pre", color="tab:orange", label="Pareto frontier")
    chosen = next(c for c in final if c["fingerprint"] == summary["chosen"])
    axis.scatter([chosen["predicted_speedup"]], [chosen["fidelity"]], marker="*", s=220, color="tab:red",
                 zorder=3, label="chosen")  # fmt: skip
    target = summary["target"]
    if target["kind"] == "speedup":
        axis.axvline(target["value"], color="grey", ls="--", lw=1, label="target speedup")
    else:
        axis.axhline(target["value"], color="grey", ls="--", lw=1, label="target fidelity")
    axis.set_xlabel("predicted TTFT speedup vs full")
    axis.set_ylabel("fidelity to the full model's answer")
    axis.set_ylim(-0.03, 1.03)
    axis.set_title(f"{summary['model_name']}, ~{summary['settings']['length']} tokens", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
