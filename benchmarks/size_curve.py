"""Retention vs model size: each method's share of the full model's score, against the model's parameter count.

    R=benchmarks/results
    python benchmarks/size_curve.py --out $R/size_curve_4096 \
        --run qwen2.5-coder-0.5b=$R/size_qwen2.5-coder-0.5b_4096:$R/size_bench_qwen2.5-coder-0.5b_4096 \
        --run qwen2.5-coder-1.5b=$R/size_qwen2.5-coder-1.5b_4096:$R/size_bench_qwen2.5-coder-1.5b_4096

Each ``--run NAME=EVAL_DIR[:BENCH_DIR]`` names a zoo model (or model folder) and the ``spts eval`` folder that
compared methods on it (``full`` among them; one prompt length); the optional ``spts bench`` folder gives each
method's TTFT speedup measured side by side (else the eval's paired speedup is used, marked as such). Parameter
counts come from the model's config (built on the meta device: no weights are loaded). ``benchmarks/size_curve.sh``
runs the evals, benches and this script. Writes ``rows.json``, ``table.md`` and ``retention_vs_size.png``.

Retention's 95% interval is a paired bootstrap over the eval's samples (the same samples drawn for a method and
the full model), so a reader can tell a size trend from sampling noise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from spts.machine import machine


def parameter_count(model: str) -> int:
    """Parameters of a zoo model or model folder, from its config alone."""
    from spts.zoo import ZOO, pretrained_path

    folder = pretrained_path(model) if model in ZOO else Path(model)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    return sum(p.numel() for p in lm.parameters())


def read_scores(eval_dir: Path, field: str = "score") -> dict[str, dict]:
    """Each sample's score (or another ``field`` of its rows, e.g. ``prediction``) per method, from an eval folder."""
    by_sample: dict[str, dict] = {}
    for line in (eval_dir / "samples.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_sample.setdefault(row["sample_id"], {})[row["method"]] = row[field]
    return by_sample


def paired_scores(by_sample: dict[str, dict[str, float]], first: str, second: str) -> np.ndarray:
    """One row per sample both methods answered: (``first``'s score, ``second``'s)."""
    return np.array([(s[first], s[second]) for s in by_sample.values() if first in s and second in s])


def paired_resample_means(pairs: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap over the rows of ``paired_scores``, drawing the same samples for both methods: each draw's mean
    score of the first and of the second."""
    picks = np.random.default_rng(seed).integers(0, len(pairs), size=(draws, len(pairs)))
    return pairs[picks, 0].mean(1), pairs[picks, 1].mean(1)


def retention_interval(by_sample: dict[str, dict[str, float]], method: str) -> tuple[float, float]:
    """95% paired-bootstrap interval of ``method``'s mean score over the full model's, over the given samples."""
    full, other = paired_resample_means(paired_scores(by_sample, "full", method))
    ratios = np.divide(other, full, out=np.full(len(full), np.nan), where=full > 0)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def difference_interval(by_sample: dict[str, dict[str, float]], method: str, other: str) -> tuple[float, float, float]:
    """``method``'s mean score minus ``other``'s over the samples both answered, in points (0-100), with its 95%
    paired-bootstrap interval: (difference, low, high)."""
    pairs = paired_scores(by_sample, method, other)
    mine, theirs = paired_resample_means(pairs)
    low, high = np.percentile(100 * (mine - theirs), [2.5, 97.5])
    return 100 * float(np.mean(pairs[:, 0] - pairs[:, 1])), float(low), float(high)


def read_methods(eval_dir: Path, bench_dir: Path | None = None, against: Sequence[str] = ()) -> tuple[str, list[dict]]:
    """The prompt length of an ``spts eval`` folder (one length) and, per method, its score, share of the full
    model's (with a paired-bootstrap 95% interval), KV kept, and TTFT speedup: from the ``spts bench`` folder where
    it timed that method side by side, else the eval's paired speedup (marked as such). For each name in
    ``against`` that the folder holds, each other method also gets that method's score minus its own
    (``difference_interval``) under ``minus[name]``."""
    summary = json.loads((eval_dir / "summary.json").read_text())
    lengths = {a["length"] for a in summary["averages"]}
    if len(lengths) != 1:
        raise SystemExit(f"{eval_dir} holds lengths {sorted(lengths)}; give one eval folder per length")
    scores = {a["method"]: a for a in summary["averages"]}
    if "full" not in scores:
        raise SystemExit(f"{eval_dir} has no 'full' rows to compare with")
    bench = {}
    if bench_dir:
        rows = json.loads((bench_dir / "summary.json").read_text())["rows"]
        bench = {r["method"]: r["speedup"] for r in rows if str(r["length"]) in lengths}
    # The samples every method answered, as the eval's table counts them (a folder can hold more rows of some
    # methods, e.g. copied from a longer run): the interval must come from the prompts the scores come from.
    by_sample = {sid: s for sid, s in read_scores(eval_dir).items() if scores.keys() <= s.keys()}
    if any(a["n"] != len(by_sample) for a in scores.values()):
        counts = ", ".join(f"{name} {a['n']}" for name, a in scores.items())
        raise SystemExit(
            f"{eval_dir}: its table counts {counts} samples, but {len(by_sample)} were answered by every method; "
            f"rebuild the table over those (spts eval ... --samples N with N per task)"
        )
    full = scores["full"]["score"]
    methods = []
    for name, average in scores.items():
        methods.append({
            "method": name,
            "n": average["n"],
            "score": average["score"],
            "retention": average["score"] / full if full else float("nan"),
            "retention_95": retention_interval(by_sample, name),
            "kv_fraction": average.get("kv_fraction"),
            "speedup": bench.get(name, average["speedup"]),
            "speedup_source": "bench" if name in bench else "eval (paired)",
            "minus": {ref: difference_interval(by_sample, ref, name) for ref in against
                      if ref in scores and ref != name},
        })  # fmt: skip
    return lengths.pop(), methods


def parse_run(spec: str) -> tuple[str, str, str]:
    """``NAME=EVAL_DIR[:BENCH_DIR]`` as (name, eval folder, bench folder or ""), each folder holding a summary."""
    name, _, dirs = spec.partition("=")
    eval_dir, _, bench_dir = dirs.partition(":")
    if not name or not eval_dir:
        raise SystemExit(f"--run {spec!r}: write NAME=EVAL_DIR[:BENCH_DIR]")
    for folder in filter(None, (eval_dir, bench_dir)):
        if not (Path(folder) / "summary.json").is_file():
            raise SystemExit(f"--run {spec!r}: {folder} has no summary.json (run spts eval / spts bench there first)")
    return name, eval_dir, bench_dir


def interval_bars(method: dict) -> tuple[float, float]:
    """How far a method's 95% interval reaches below and above its retention, in % of the full score."""
    low, high = method["retention_95"]
    return 100 * (method["retention"] - low), 100 * (high - method["retention"])


def read_study(spec: str, against: Sequence[str] = ()) -> dict:
    """One ``--run``: its name, prompt length, folders and per-method figures (``read_methods``)."""
    name, eval_dir, bench_dir = parse_run(spec)
    length, methods = read_methods(Path(eval_dir), Path(bench_dir) if bench_dir else None, against)
    return {"model": name, "length": length, "eval_dir": eval_dir, "bench_dir": bench_dir or None,
            "methods": methods}  # fmt: skip


def read_run(spec: str) -> dict:
    study = read_study(spec)
    return {**study, "params": parameter_count(study["model"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=EVAL_DIR[:BENCH_DIR] (NAME: a model)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = sorted((read_run(spec) for spec in args.run), key=lambda r: r["params"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(runs, indent=2))

    command = "python benchmarks/size_curve.py " + " ".join(f"--run {s}" for s in args.run) + f" --out {args.out}"
    lines = [
        "# Retention vs model size",
        "",
        f"Built {datetime.now(UTC):%Y-%m-%d} on {machine()} from the eval and bench folders below (their own tables "
        f"give the machine and date each was measured on). Command: `{command}`",
        "",
        "| model | parameters | prompt tokens | method | samples | score | kept of full (95% interval) "
        "| TTFT speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for m in run["methods"]:
            source = "" if m["speedup_source"] == "bench" else " (eval)"
            lines.append(
                f"| {run['model']} | {run['params'] / 1e9:.2f}B | {run['length']} | {m['method']} | {m['n']} | "
                f"{m['score']:.1f} | {m['retention']:.0%} ({m['retention_95'][0]:.0%}-{m['retention_95'][1]:.0%}) | "
                f"{m['speedup']:.2f}x{source} |"
            )
    lines += [
        "",
        "Parameters are counted as the model is loaded (every weight matrix once; a GGUF that stores its output "
        "matrix apart from the input embedding counts both). The interval is a paired bootstrap over samples.",
    ]
    lines += ["", "Sources: " + "; ".join(f"{r['model']}: `{r['eval_dir']}`, `{r['bench_dir']}`" for r in runs)]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(6, 4))
    names = sorted({m["method"] for r in runs for m in r["methods"]} - {"full"})
    for name in names:
        points = [(r["params"], m) for r in runs for m in r["methods"] if m["method"] == name]
        axis.errorbar([p for p, _ in points], [100 * m["retention"] for _, m in points], marker="o", capsize=3,
                      yerr=np.transpose([interval_bars(m) for _, m in points]), label=name)  # fmt: skip
        for params, m in points:
            axis.annotate(f"{m['speedup']:.2f}x", (params, 100 * m["retention"]), fontsize=7,
                          textcoords="offset points", xytext=(4, 4))  # fmt: skip
    axis.axhline(95, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("parameters")
    axis.set_ylabel("score kept, % of the full model")
    axis.set_title(f"Retention vs size, {runs[0]['length']} tokens (labels: TTFT speedup; bars: 95%)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / "retention_vs_size.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
