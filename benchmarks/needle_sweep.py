"""Needle-in-a-haystack sweep on a zoo model: which SPTS schedules keep the answer, at what prefill cost.

    python benchmarks/needle_sweep.py --tokens 6000 --seeds 0,1,2,3 --out benchmarks/results/needle_sweep_smollm2_6k

Each config answers the same prompts (seeds x depths 0.25/0.75); rows go to OUT.jsonl as they finish
(a rerun skips finished rows), and OUT.md gets the summary table. CPU timings are for comparing
configs within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import spts
from spts import SPTSConfig
from spts.calibration.shipped import zoo_proxies
from spts.data.haystack import build_needle_prompt, prompt_input_ids
from spts.generation import greedy_continue, prefill_with_cache
from spts.zoo import load_pretrained

C = SPTSConfig
CONFIGS: dict[str, tuple[SPTSConfig | None, bool]] = {
    "full model": (None, False),
    "derived (for_model: start 10, paper-relative)": (None, False),  # filled in main()
    "start 12, pool 1": (C(start_layer=12, stage_boundaries=(20, 23, 26), budgets=(0.5,) * 4, prune=False), False),
    "start 17, pool 1": (
        C(start_layer=17, stage_boundaries=(20, 23, 26), budgets=(0.3, 0.2, 0.1, 0.05), delta=0.03),
        False,
    ),
    "start 17, pool 13 (preset)": (C.preset("smollm2-135m"), False),
    "start 17, pool 13 + LTP": (C.preset("smollm2-135m"), True),
    "start 14, pool 13 + LTP": (
        C(
            start_layer=14,
            stage_boundaries=(17, 20, 23, 26),
            budgets=(0.5, 0.35, 0.25, 0.15, 0.1),
            delta=0.05,
            pool_kernel=13,
        ),
        True,
    ),
    "start 12, pool 13 + LTP": (
        C(
            start_layer=12,
            stage_boundaries=(15, 18, 21, 25),
            budgets=(0.6, 0.45, 0.3, 0.2, 0.1),
            delta=0.05,
            pool_kernel=13,
        ),
        True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--configs", default=None, help="comma-separated subset of config names")
    parser.add_argument("--out", type=Path, required=True, help="output stem (OUT.jsonl, OUT.md)")
    args = parser.parse_args()

    model, tokenizer = load_pretrained(args.model)
    configs = dict(CONFIGS)
    configs["derived (for_model: start 10, paper-relative)"] = (SPTSConfig.for_model(model), False)
    names = args.configs.split(",") if args.configs else list(configs)
    proxies = zoo_proxies(args.model, model, tokenizer) if any(configs[n][1] for n in names) else None
    prompts = [
        build_needle_prompt(tokenizer, args.tokens, depth=depth, seed=int(seed))
        for seed in args.seeds.split(",")
        for depth in (0.25, 0.75)
    ]
    jsonl = args.out.with_suffix(".jsonl")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if jsonl.exists():
        done = {(r["config"], r["seed"], r["depth"]) for r in map(json.loads, jsonl.read_text().splitlines())}
    with jsonl.open("a") as sink:
        for name in names:
            config, use_ltp = configs[name]
            for prompt in prompts:
                if (name, prompt.seed, prompt.depth) in done:
                    continue
                ids = prompt_input_ids(tokenizer, prompt)
                context = (
                    spts.enabled(model, config, proxies=proxies if use_ltp else None)
                    if config
                    else contextlib.nullcontext()
                )
                with context:
                    started = time.perf_counter()
                    logits, cache = prefill_with_cache(model, ids)
                    seconds = time.perf_counter() - started
                    answer = greedy_continue(model, tokenizer, logits, cache, 8)
                row = {
                    "config": name,
                    "spts": config.to_dict() if config else None,
                    "ltp": use_ltp,
                    "seed": prompt.seed,
                    "depth": prompt.depth,
                    "tokens": ids.shape[1],
                    "answer": answer,
                    "expected": prompt.answer,
                    "correct": prompt.is_correct(answer),
                    "prefill_seconds": seconds,
                    "kv_tokens": sum(spts.cache_tokens_per_layer(cache)),
                }
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(f"{name:48s} seed {prompt.seed} depth {prompt.depth}: {answer!r} {row['correct']}", flush=True)
    summarize(jsonl, args)


def summarize(jsonl: Path, args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    full = [r["prefill_seconds"] for r in rows if r["config"] == "full model"]
    full_median = sorted(full)[len(full) // 2] if full else float("nan")
    lines = [
        f"Needle sweep, {args.model}, ~{args.tokens} tokens, seeds {args.seeds} x depths 0.25/0.75. "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} CPU, torch {torch.__version__}, fp32. "
        f"Command: `python benchmarks/needle_sweep.py --tokens {args.tokens} --seeds {args.seeds} --out {args.out}`",
        "",
        "| config | correct | median prefill (s) | vs full | KV kept |",
        "|---|---|---|---|---|",
    ]
    full_kv = next((r["kv_tokens"] for r in rows if r["config"] == "full model"), None)
    for name in sorted({r["config"] for r in rows}, key=list(CONFIGS).index):
        group = [r for r in rows if r["config"] == name]
        seconds = sorted(r["prefill_seconds"] for r in group)[len(group) // 2]
        kv = sum(r["kv_tokens"] for r in group) / len(group)
        kept = f"{kv / full_kv:.0%}" if full_kv else "-"
        lines.append(
            f"| {name} | {sum(r['correct'] for r in group)}/{len(group)} | {seconds:.1f} | "
            f"{full_median / seconds:.2f}x | {kept} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
