"""Stock vLLM vs vLLM+SPTS serving a load of concurrent streaming chat requests of mixed lengths (loopback).

For each engine (alternating which goes first, ``--repeats`` times) a fresh `vllm serve` with identical settings
(eager, whole-prompt prefill steps, no prefix caching; SPTS switched on by ``--additional-config`` on one of them)
gets the same requests: ``--requests`` chat prompts spread evenly over [``--shortest``, window - new tokens]
tokens, shuffled, one arriving every ``--interval`` seconds, each streaming ``--new-tokens`` greedy tokens (EOS
ignored). Per request: time to first streamed token (TTFT) and to the last; per run: TTFT p50/p95 (all requests,
and those long enough for SPTS), output tokens per second (all tokens over the run's wall time) and whether every
request completed. Writes rows.jsonl (every request of every run), summary.json and table.md.

    VLLM_CPU_OMP_THREADS_BIND=0-1 .venv-vllm/bin/python benchmarks/vllm_load.py \\
        --config benchmarks/results/tune_smollm2_4k/tuned.json --out benchmarks/results/vllm_load_smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from spts.data.haystack import build_needle_prompt
from spts.integrations.vllm.load import ChatRequest, Server, exit_on_sigterm, run_load
from spts.machine import machine
from spts.zoo.load import pretrained_path


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def build_requests(tokenizer, args) -> tuple[list[ChatRequest], list[int]]:
    top = args.window - args.new_tokens
    targets = [round(args.shortest + (top - args.shortest) * i / (args.requests - 1)) for i in range(args.requests)]
    random.Random(args.seed).shuffle(targets)
    requests, lengths = [], []
    for i, target in enumerate(targets):
        prompt = build_needle_prompt(tokenizer, target, seed=args.seed + i, answer_prefix=False)
        messages = list(prompt.messages)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        lengths.append(len(tokenizer(text, add_special_tokens=False).input_ids))
        body = {"model": "served", "messages": messages, "max_tokens": args.new_tokens, "temperature": 0,
                "ignore_eos": True}  # fmt: skip
        requests.append(ChatRequest(f"r{i}", body, delay_s=i * args.interval))
    if max(lengths) + args.new_tokens > args.window:
        raise SystemExit(f"a prompt has {max(lengths)} tokens: lower --window's share or raise --window")
    return requests, lengths


def run_engine(engine: str, args, requests: list[ChatRequest], folder: Path, log: Path) -> list[dict]:
    arguments = ["--served-model-name", "served", "--dtype", args.dtype, "--enforce-eager", "--seed", "0",
                 "--max-model-len", str(args.window), "--max-num-batched-tokens", str(args.window),
                 "--no-enable-chunked-prefill", "--no-enable-prefix-caching"]  # fmt: skip
    if engine == "spts":
        settings = {"file": str(args.config)} if args.config else {"preset": args.preset}
        settings["min_prompt_tokens"] = args.min_prompt_tokens
        arguments += ["--additional-config", json.dumps({"spts": settings})]
    vllm = Path(sys.executable).parent / "vllm"
    with Server(vllm, folder, arguments, log) as server:
        warm = [ChatRequest("warm-up", {**requests[0].body, "max_tokens": 2})]
        run_load(server.port, warm, timeout=args.timeout)  # first-request costs (allocation, caches) out of the way
        begin = time.perf_counter()
        results = run_load(server.port, requests, timeout=args.timeout)
        wall = time.perf_counter() - begin
        code = server.stop()
    if code != 0:
        raise SystemExit(f"the {engine} server exited with {code}; its output: {log}")
    rows = []
    for result in results:
        row = asdict(result)
        row.pop("token_ids")
        rows.append({**row, "engine": engine, "tokens": len(result.token_ids), "complete": result.complete,
                     "run_wall_s": wall, "sent_s": result.sent_at - begin})  # fmt: skip
    return rows


def summarise(rows: list[dict], min_prompt_tokens: int) -> dict:
    ttft = [r["first_token_s"] for r in rows if r["first_token_s"] is not None]
    long = [
        r["first_token_s"] for r in rows if r["first_token_s"] is not None and r["prompt_tokens"] >= min_prompt_tokens
    ]
    ends = [r["sent_s"] + r["end_s"] for r in rows if r["end_s"] is not None]
    return {
        "complete": sum(r["complete"] for r in rows),
        "requests": len(rows),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "ttft_long_p50_s": percentile(long, 50) if long else None,
        "e2e_p50_s": percentile([r["end_s"] for r in rows if r["end_s"] is not None], 50),
        "output_tokens_per_s": sum(r["tokens"] for r in rows) / max(ends),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a zoo model or a model folder")
    parser.add_argument("--config", type=Path, help="an SPTS config file (spts tune's tuned.json); else --preset")
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--shortest", type=int, default=200, help="the shortest prompt's target tokens")
    parser.add_argument("--window", type=int, default=8192, help="--max-model-len")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between arrivals")
    parser.add_argument("--min-prompt-tokens", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    exit_on_sigterm()  # a terminated run stops its `vllm serve` instead of leaving it behind
    load_before = os.getloadavg()[0]  # other processes' CPU use shows in it; recorded with the results
    from transformers import AutoTokenizer

    folder = Path(args.model) if Path(args.model).is_dir() else pretrained_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    requests, lengths = build_requests(tokenizer, args)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    order = [("stock", "spts") if repeat % 2 == 0 else ("spts", "stock") for repeat in range(args.repeats)]
    for repeat, engines in enumerate(order):
        for engine in engines:
            if any(r["repeat"] == repeat and r["engine"] == engine for r in rows):
                continue  # resumed
            new = run_engine(engine, args, requests, folder, args.out / f"server_{engine}_{repeat}.log")
            new = [{**r, "repeat": repeat} for r in new]
            with jsonl.open("a") as sink:
                sink.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
            print(engine, repeat, summarise(new, args.min_prompt_tokens), flush=True)
    runs = {
        (engine, k): summarise([r for r in rows if (r["engine"], r["repeat"]) == (engine, k)], args.min_prompt_tokens)
        for engine in ("stock", "spts")
        for k in range(args.repeats)
    }
    medians = {engine: _medians([runs[engine, k] for k in range(args.repeats)]) for engine in ("stock", "spts")}
    command = "python " + " ".join(sys.argv)
    header = (
        f"{args.model}, vllm-cpu {_version('vllm-cpu')}, {args.dtype}, {machine()}, "
        f"VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND', '(unset: one core)')}, "
        f"{datetime.now(UTC):%Y-%m-%d}; {args.requests} streaming chat requests of {min(lengths)}-{max(lengths)} "
        f"prompt tokens, one every {args.interval} s, {args.new_tokens} new tokens each (EOS ignored), window "
        f"{args.window}; SPTS: {args.config or args.preset}, prompts of at least {args.min_prompt_tokens} tokens; "
        f"{args.repeats} runs per engine, medians; 1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. Command: {command}"
    )
    summary = {"header": header, "prompt_tokens": lengths, "medians": medians}
    summary["runs"] = {f"{engine}/{k}": v for (engine, k), v in runs.items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    columns = ["complete", "ttft_p50_s", "ttft_p95_s", "ttft_long_p50_s", "e2e_p50_s", "output_tokens_per_s"]
    titles = ["complete", "TTFT p50 (s)", "TTFT p95 (s)", f"TTFT p50, prompts >= {args.min_prompt_tokens} (s)",
              "E2E p50 (s)", "output tokens/s"]  # fmt: skip
    lines = [header, "", "| engine | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for name, m in (("stock vLLM", medians["stock"]), ("vLLM + SPTS", medians["spts"])):
        cells = [f"{m['complete']:.0f}/{args.requests}"] + [f"{m[c]:.2f}" for c in columns[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = [medians["stock"][c] / medians["spts"][c] for c in columns[1:-1]]
    ratios.append(medians["spts"]["output_tokens_per_s"] / medians["stock"]["output_tokens_per_s"])
    lines.append(
        "| SPTS's gain (stock / SPTS; tokens/s: SPTS / stock) | | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |"
    )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _medians(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0] if runs[0][key] is not None}


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
