"""Can a deeper layer's attention, applied to an earlier layer's hidden states, find the needle sooner?

    python benchmarks/lookahead_probe.py --prompts 8 --out benchmarks/results/lookahead_probe_smollm2_4k

SPTS probes each skipping layer with that layer's own last-token attention. Small models retrieve late
(SmolLM2-135M: the needle ranks in the thousands until layer 17 of 30, docs/tuning.md), so early skipping
layers select blind. This runs the unmodified model once per needle prompt, records every layer's input,
and scores the tokens of layer ``s``'s input with the query/key weights of layer ``t >= s`` (the probe of
layer ``t``, "looking ahead" ``t - s`` layers, at the cost of one key projection). Reported per (s, t):
the share of the needle value's tokens that a 50% budget would keep (pooled scores, kernel 13) and the
median rank of the value's first token. Writes ``table.md`` and ``rows.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

import torch

from spts.adapters import adapter_for
from spts.data.haystack import build_needle_prompt, prompt_input_ids
from spts.machine import machine
from spts.policies import layer_inputs, pool_scores, probe_layer_input
from spts.zoo import load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--first-layer", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--pool", type=int, default=13)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model, tokenizer = load_pretrained(args.model)
    adapter = adapter_for(model)
    layers = adapter.layers()
    n_layers = len(layers)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.prompts):
        depth = (i + 0.5) / args.prompts
        prompt = build_needle_prompt(tokenizer, args.tokens, depth=depth, seed=args.seed + i)
        ids = prompt_input_ids(tokenizer, prompt)[0]
        answer = tokenizer(" " + prompt.answer, add_special_tokens=False).input_ids
        start = next(p for p in range(len(ids)) if ids[p : p + len(answer)].tolist() == answer)
        value = torch.arange(start, start + len(answer))
        inputs = layer_inputs(model, ids[None], range(args.first_layer, n_layers))
        with torch.inference_mode():
            keep = max(1, round(args.budget * len(ids)))
            for source, (hidden, position_embeddings) in inputs.items():
                for target in range(source, n_layers):
                    scores = probe_layer_input(adapter, layers[target], hidden, position_embeddings)
                    pooled = pool_scores(scores, args.pool)[0] if args.pool > 1 else scores[0]
                    kept = torch.zeros(len(ids), dtype=torch.bool)
                    kept[pooled.topk(keep).indices] = True
                    rank = int((scores[0] > scores[0, start]).sum())
                    rows.append({"prompt": i, "depth": depth, "source": source, "target": target,
                                 "value_kept": float(kept[value].float().mean()), "first_rank": rank})  # fmt: skip
        print(f"prompt {i + 1}/{args.prompts} done", flush=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    sources = sorted({r["source"] for r in rows})
    targets = list(range(args.first_layer, n_layers))
    cell = {}
    for s in sources:
        for t in targets:
            group = [r for r in rows if r["source"] == s and r["target"] == t]
            if group:
                kept = statistics.mean(r["value_kept"] for r in group)
                cell[s, t] = f"{kept:.0%} / {statistics.median(r['first_rank'] for r in group):.0f}"
    lines = [
        f"# Look-ahead probe: {args.model}, {args.prompts} needle prompts of {args.tokens} tokens",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {machine()}, torch {torch.__version__}. Command: `python "
        f"benchmarks/lookahead_probe.py --model {args.model} --tokens {args.tokens} --prompts {args.prompts} "
        f"--seed {args.seed} --first-layer {args.first_layer} --budget {args.budget} --pool {args.pool} "
        f"--out {args.out}`",
        "",
        f"Cell (row: the layer whose input is scored, column: the layer whose query/key weights score it): share "
        f"of the needle value's tokens kept by a {args.budget:.0%} budget on pooled scores (kernel {args.pool}) / "
        "median rank of its first token by raw score (0 = the top). The diagonal is SPTS's own probe.",
        "",
        "| input of layer | " + " | ".join(str(t) for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for s in sources:
        lines.append(f"| {s} | " + " | ".join(cell.get((s, t), "") for t in targets) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
