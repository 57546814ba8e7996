"""Which sparse-attention variants keep a few chosen answers (exploratory: it picks prompts a run already lost).

    python benchmarks/sparse_answer_probe.py --out benchmarks/results/probe_sparse_answers_qwen0.5b_8192 \
        --indices 7,10 --methods "T,T+sparse0.9,T+sparse0.9:L8-13,T+sparse0.7:H"

``T`` stands for the tuned 4K schedule (``--schedule``). For each prompt of ``--task`` at ``--length`` (built as
``spts eval`` builds them, same seed and chat template) and each method: its greedy answer, its score, the density
of every sparse layer, and whether the asked needle's tokens are still in the last layer's cache (SPTS's own
selection, which sparse attention could change). One row per answer in ``rows.jsonl`` (rows already there are
kept, so an interrupted run resumes) and a table in ``table.md``.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch

import spts.eval.runner as runner
from spts import last_stats
from spts.calibration.shipped import zoo_proxies
from spts.cli.common import base_config, load_model
from spts.eval import PromptRenderer, build_samples, resolve_methods
from spts.machine import machine

SCHEDULE = "benchmarks/results/tune_qwen2.5-coder-0.5b_4096/tuned.json"


def needle_kept(stats, ids: torch.Tensor, tokenizer, reference: str) -> str:
    """'kept/all' tokens of the reference's first occurrence in the prompt held by the last layer's cache."""
    if stats is None or not stats.kv_positions:
        return "-"
    text, number = ids[0].tolist(), tokenizer(reference, add_special_tokens=False)["input_ids"]
    starts = [p for p in range(len(text) - len(number)) if text[p : p + len(number)] == number]
    if not starts:
        return "-"
    held = set(stats.kv_positions[max(stats.kv_positions)][0].tolist())
    return f"{sum(starts[0] + k in held for k in range(len(number)))}/{len(number)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", required=True, help="comma-separated method specs; T = the tuned schedule")
    parser.add_argument("--indices", required=True, help="comma-separated sample indices")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--schedule", default=SCHEDULE)
    parser.add_argument("--task", default="niah_multikey")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(2)
    lm, tokenizer = load_model(args.model, torch.float32, "cpu")
    specs = ",".join(f"tuned={args.schedule}{s[1:]}" if s.startswith("T") else s for s in args.methods.split(","))
    methods = resolve_methods(specs, base_config(None, args.model, lm), lm)
    renderer = PromptRenderer(tokenizer, "auto", int(lm.config.max_position_embeddings) - 512)
    indices = [int(i) for i in args.indices.split(",")]
    samples = build_samples(renderer, args.task, [args.length], max(indices) + 1, args.seed, None)
    proxies = zoo_proxies(args.model, lm, tokenizer, progress=False)

    # The prefill's statistics, read just before the reply is decoded (run_method leaves SPTS off afterwards).
    seen: dict[str, object] = {}
    decode = runner.greedy_continue

    def recording_decode(model, *rest, **options):
        try:
            seen["stats"] = last_stats(model)
        except ValueError:  # the full model: SPTS is off
            seen["stats"] = None
        return decode(model, *rest, **options)

    runner.greedy_continue = recording_decode
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.exists() else []
    done = {(r["index"], r["method"]) for r in rows}
    for index in indices:
        sample, ids = samples[index], renderer.input_ids(samples[index])
        for method in methods:
            if (index, method.name) in done:
                continue
            row = runner.run_method(lm, tokenizer, ids, sample, method, proxies)
            stats = seen["stats"]
            densities = {i: round(s.density, 2) for i, s in stats.sparse.items()} if stats is not None else {}
            reference = sample.references[0]
            rows.append({
                "index": index, "method": method.name, "score": row["score"], "answer": row["prediction"][:40],
                "reference": reference, "density": row.get("sparse_density", 1.0), "layer_density": densities,
                "needle_in_last_cache": needle_kept(stats, ids, tokenizer, reference),
            })  # fmt: skip
            with rows_file.open("a") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"{args.model}, cpu float32, torch {torch.__version__}, {machine()}, {date.today()}; `{args.task}` at "
        f"{args.length} tokens, seed {args.seed}; "
        f"`T` = `{args.schedule}`. Command: `python benchmarks/sparse_answer_probe.py --out {args.out} --indices "
        f'{args.indices} --methods "{args.methods}"` (rows of earlier commands into the same folder kept)',
        "",
        "| prompt | method | score | answer | reference | mean density | needle in last cache | density per layer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["index"], r["method"])):
        answer = r["answer"].replace("\n", " ").strip()
        lines.append(
            f"| {r['index']} | `{r['method']}` | {r['score']:.0f} | {answer} | "
            f"{r['reference']} | {r['density']:.0%} | {r['needle_in_last_cache']} | {r['layer_density'] or '-'} |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
