"""Does probing with the question (the last W tokens' queries) find the answer in earlier layers than the last token?

    python benchmarks/probe_window_study.py --model smollm2-135m --samples 4 \
        --out benchmarks/results/probe_window_smollm2_4k

SPTS scores candidates by the last token's attention (the paper's PAP). On SmolLM2-135M that ranks a needle's
value near the middle of the prompt until layer 17 of 30 (docs/tuning.md), so skipping cannot start earlier
without losing it. The question's own tokens (the needle's key, the QA question) might attend to the matching
context earlier. This runs the unmodified model once per calibration prompt (the tuner's generators and seeds,
never ``spts eval``'s), records every layer's input, and scores it with the layer's own probe for each probe
window W (causal among the window) and head aggregation. Reported per (layer, W, aggregation): the share of the
answer's tokens (every verbatim occurrence of a reference in the prompt) that a budget keeps on pooled scores,
and the median rank of the answer's first token by raw score. Writes ``rows.jsonl`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch

from spts.adapters import adapter_for
from spts.machine import machine
from spts.policies import layer_inputs, pool_scores, probe_layer_input
from spts.tasks import generate, resolve_tasks
from spts.tasks.prompts import PromptRenderer
from spts.tuning.prompts import TUNE_SEED_OFFSET
from spts.zoo import load_pretrained


def answer_positions(tokenizer, ids: list[int], references: list[str]) -> list[int]:
    """Positions of every verbatim occurrence (with or without a leading space) of every reference in ``ids``."""
    positions: set[int] = set()
    for reference in references:
        for text in (" " + reference, reference):
            span = tokenizer(text, add_special_tokens=False).input_ids
            for p in range(len(ids) - len(span) + 1):
                if ids[p : p + len(span)] == span:
                    positions.update(range(p, p + len(span)))
    return sorted(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=4, help="prompts per task")
    parser.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue,qa_squad")
    parser.add_argument("--seed", type=int, default=0, help="calibration seed, offset like spts tune's")
    parser.add_argument("--layers", default="10-20", help="first-last layer whose input is probed")
    parser.add_argument("--windows", default="1,8,16,32,64")
    parser.add_argument("--aggregations", default="mean,max")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--pool", type=int, default=13)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model, tokenizer = load_pretrained(args.model)
    adapter = adapter_for(model)
    layers = adapter.layers()
    first, last = (int(x) for x in args.layers.split("-"))
    windows = [int(w) for w in args.windows.split(",")]
    aggregations = args.aggregations.split(",")
    renderer = PromptRenderer(tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in resolve_tasks(args.tasks):
        for index in range(args.samples):
            sample = generate(spec, renderer, args.length, index, seed=TUNE_SEED_OFFSET + args.seed)
            ids = renderer.input_ids(sample)
            answer = answer_positions(tokenizer, ids[0].tolist(), list(sample.references))
            if not answer:
                print(f"{sample.sample_id}: no reference occurs verbatim in the prompt; skipped", flush=True)
                continue
            inputs = layer_inputs(model, ids, range(first, last + 1))
            with torch.inference_mode():
                n = ids.shape[-1]
                keep = max(1, round(args.budget * n))
                value = torch.tensor(answer)
                for idx, (hidden, position_embeddings) in inputs.items():
                    for window in windows:
                        for aggregation in aggregations:
                            scores = probe_layer_input(
                                adapter, layers[idx], hidden, position_embeddings, window, aggregation
                            )[0]
                            pooled = pool_scores(scores[None], args.pool)[0] if args.pool > 1 else scores
                            kept = torch.zeros(n, dtype=torch.bool)
                            kept[pooled.topk(keep).indices] = True
                            rank = int((scores > scores[answer[0]]).sum())
                            rows.append({"sample": sample.sample_id, "task": spec.name, "layer": idx,
                                         "window": window, "aggregation": aggregation,
                                         "answer_kept": float(kept[value].float().mean()), "first_rank": rank,
                                         "prompt_tokens": n})  # fmt: skip
            print(f"{sample.sample_id} done", flush=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_table(args, rows, windows, aggregations)


def write_table(args, rows, windows, aggregations) -> None:
    columns = [(w, a) for a in aggregations for w in windows]
    tasks = sorted({r["task"] for r in rows})
    prompts = len({r["sample"] for r in rows})
    command = (
        f"python benchmarks/probe_window_study.py --model {args.model} --length {args.length} --samples "
        f"{args.samples} --tasks {args.tasks} --seed {args.seed} --layers {args.layers} --windows {args.windows} "
        f"--aggregations {args.aggregations} --budget {args.budget} --pool {args.pool} --out {args.out}"
    )
    lines = [
        f"# Probe window study: {args.model}, {prompts} calibration prompts of ~{args.length} tokens "
        f"({', '.join(tasks)})",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {machine()}, torch {torch.__version__}. Command: `{command}`",
        "",
        f"Cell: share of the answer's tokens that a {args.budget:.0%} budget keeps on pooled scores (kernel "
        f"{args.pool}), mean over prompts / median rank of the answer's first token by raw score (0 = the top). "
        "Column: probe window W (the last W tokens' queries, causal) and head aggregation. W=1, mean is SPTS's "
        "default probe (the paper's).",
        "",
    ]
    for task in [None, *tasks]:
        group_rows = [r for r in rows if task is None or r["task"] == task]
        lines += [
            f"## {'all tasks' if task is None else task} ({len({r['sample'] for r in group_rows})} prompts)",
            "",
            "| input of layer | " + " | ".join(f"W={w} {a}" for w, a in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for layer in sorted({r["layer"] for r in group_rows}):
            cells = []
            for w, a in columns:
                group = [r for r in group_rows if r["layer"] == layer and r["window"] == w and r["aggregation"] == a]
                kept = statistics.mean(r["answer_kept"] for r in group)
                cells.append(f"{kept:.0%} / {statistics.median(r['first_rank'] for r in group):.0f}")
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines.append("")
    (args.out / "table.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
