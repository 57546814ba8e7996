"""Which layers of a schedule cost an answer? Greedy answers of one schedule's parts on chosen samples.

    python benchmarks/probe_layer_ranges.py --config benchmarks/results/tune_qwen2.5-coder-0.5b_4096/tuned.json \
        --task lbf_hotpotqa --indices 2,9 --seed 0 --out benchmarks/results/probe_layer_ranges_qwen0.5b

For each sample, the full model's answer, then the schedule's and its parts', each prefilled with the layers below
its start replayed from the full model's prefill (exactly what the full model computes there):

* ``schedule``: the config as given; ``no-ffn-skip``: every candidate's FFN runs; ``no-prune``: no MSDP pruning;
* ``only<a>-<b>``: skipping in stage ``[a, b]`` alone, at that stage's budget, every other layer in full;
* ``tail<e>``: the schedule with layers ``[e, L)`` in full again (``end_layer``), for each later stage start ``e``;
* ``--extra NAME=config.json``: any other config.

A part that keeps the answer where the schedule loses it points at the layers that cost it. Exploratory: a few
samples, greedy answers (``--tokens``), no scores; ``spts eval`` measures. Writes ``rows.jsonl`` (resumable) and
``table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from spts.calibration.shipped import zoo_proxies
from spts.config import SPTSConfig
from spts.generation import greedy_continue, prefill_with_cache
from spts.machine import machine
from spts.runtime.engine import enabled, ffn_scorer
from spts.runtime.replay import RecordedPrefix, recording, replay_prefix
from spts.tasks import TASKS, PromptRenderer, generate
from spts.zoo import load_pretrained


def parts(config: SPTSConfig, num_layers: int) -> dict[str, SPTSConfig]:
    """The schedule, its ablations, each stage alone and each full tail (module docstring)."""
    out = {
        "schedule": config,
        "no-ffn-skip": config.with_(skip_ffn=False),
        "no-prune": config.with_(prune=False),
    }
    starts = config.stage_starts()
    stop = config.end_layer or num_layers
    ends = (*starts[1:], stop)
    for stage, (first, end) in enumerate(zip(starts, ends, strict=True)):
        budget = config.budgets[min(stage, len(config.budgets) - 1)]
        out[f"only{first}-{end - 1}"] = config.with_(
            start_layer=first, stage_boundaries=(), budgets=(budget,), end_layer=end if end < num_layers else None
        )
    for stage, first in enumerate(starts[2:], start=2):  # a tail from the second stage is the first stage alone
        out[f"tail{first}"] = config.with_(stage_boundaries=starts[1:stage], budgets=config.budgets[:stage],
                                           end_layer=first)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--config", required=True, help="the schedule (a config file, e.g. spts tune's tuned.json)")
    parser.add_argument("--task", required=True, help="a generated task, e.g. lbf_hotpotqa")
    parser.add_argument("--indices", default="0,1,2", help="sample indices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=12, help="greedy answer tokens")
    parser.add_argument("--extra", action="append", default=[], help="NAME=config.json (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    lm, tokenizer = load_pretrained(args.model, dtype=torch.float32)
    num_layers = lm.config.num_hidden_layers
    config = SPTSConfig.from_file(args.config, lm)
    variants = parts(config, num_layers)
    for item in args.extra:
        name, _, path = item.partition("=")
        variants[name] = SPTSConfig.from_file(path, lm)
    proxies = zoo_proxies(args.model, lm, tokenizer, progress=False)
    renderer = PromptRenderer(tokenizer, "auto", lm.config.max_position_embeddings - 512)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    lines = rows_file.read_text().splitlines() if rows_file.exists() else []
    done = {(r["sample_id"], r["variant"]): r for r in map(json.loads, lines)}
    with rows_file.open("a") as rows:
        for index in (int(i) for i in args.indices.split(",")):
            sample = generate(TASKS[args.task], renderer, args.length, index, seed=args.seed)
            ids = renderer.input_ids(sample)
            pending = [name for name in ("full", *variants) if (sample.sample_id, name) not in done]
            if not pending:
                continue
            prefix = RecordedPrefix.empty(ids, max(c.start_layer for c in variants.values()))
            with recording(lm, prefix) as start:
                start()
                logits, cache = prefill_with_cache(lm, ids)
            answers = {"full": greedy_continue(lm, tokenizer, logits, cache, args.tokens, fast=True)}
            for name in (n for n in pending if n != "full"):
                variant = variants[name]
                scorer = ffn_scorer(lm, variant, proxies)
                began = time.perf_counter()
                with enabled(lm, variant, scorer), replay_prefix(lm, prefix, variant.start_layer):
                    logits, cache = prefill_with_cache(lm, ids)
                with enabled(lm, variant, scorer):
                    answers[name] = greedy_continue(lm, tokenizer, logits, cache, args.tokens, fast=True)
                print(f"{sample.sample_id} {name:14s} {answers[name]!r} ({time.perf_counter() - began:.0f} s)")
            for name, answer in answers.items():
                if name not in pending:  # the full answer is recomputed for the others, not rewritten
                    continue
                row = {"sample_id": sample.sample_id, "variant": name, "answer": answer,
                       "references": list(sample.references), "same_as_full": answer == answers["full"]}  # fmt: skip
                done[(sample.sample_id, name)] = row
                rows.write(json.dumps(row) + "\n")
                rows.flush()
    _table(args, done, ["full", *variants])


def _table(args: argparse.Namespace, rows: dict, names: list[str]) -> None:
    samples = sorted({sample for sample, _ in rows})
    lines = [
        f"{args.model}, {args.task} at {args.length} tokens, seed {args.seed}; {machine()}, "
        f"{datetime.now(UTC).date()}. Greedy answers of {args.tokens} tokens; exploratory (a few samples, no scores). "
        f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
        "| sample | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for sample in samples:
        cells = [rows.get((sample, n), {}).get("answer", "-").replace("|", "/").replace("\n", " ") for n in names]
        lines.append(f"| {sample} | " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
