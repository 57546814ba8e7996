"""Batch benchmark (``spts bench --batch-size N``): left-padded batches of prompts of mixed lengths, the full
model vs SPTS, batched and one prompt at a time, side by side.

Per longest length ``L``, one batch of ``N`` random-token prompts spread evenly over ``[L/2, L]`` tokens. Each
method prefills it as one left-padded batch and as ``N`` separate prompts; calls are interleaved per repeat after
warm-up and medians kept. Reported: the time until every prompt has its first token (TTFT of the batch), prompts
per second, and, with ``new_tokens``, the time until every prompt has that many greedy tokens (static decoder, no
early stop). Whether the batch gave every row the first token its prompt gives alone is recorded too. Rows go to
``rows.jsonl`` as they finish, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spts.generation import decode_step, prefill_with_cache
from spts.methods import Method
from spts.runtime.engine import ffn_scorer, last_stats

MODES = ("batched", "one by one")


@dataclass(frozen=True)
class BatchRow:
    """One method, one way of running (``mode``), one batch."""

    length: int
    """The longest prompt of the batch; the others spread evenly down to half of it."""
    batch_size: int
    prompt_lengths: list[int]
    method: str
    mode: str
    ttft_median_s: float
    """Median time until every prompt of the batch has its first token."""
    ttft_spread_s: float
    prompts_per_s: float
    speedup: float
    """The full model's median TTFT in the same mode over this one's."""
    kv_fraction: float
    """Cached tokens over the full model's, over real tokens (padding excluded)."""
    same_first_tokens: bool
    """Whether the batch gave every row the first token its prompt gives alone (the same method)."""
    new_tokens: int = 0
    e2e_median_s: float | None = None
    """Median time until every prompt has ``new_tokens`` tokens; None when not measured."""
    e2e_prompts_per_s: float | None = None
    e2e_speedup: float | None = None


def mixed_lengths(longest: int, batch_size: int) -> list[int]:
    """``batch_size`` prompt lengths spread evenly over ``[longest / 2, longest]``, longest first."""
    if batch_size == 1:
        return [longest]
    return [round(longest - (longest / 2) * i / (batch_size - 1)) for i in range(batch_size)]


def left_padded_batch(prompts: Sequence[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask of 1-D prompts, left-padded (transformers' convention for generation)."""
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=prompts[0].device)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - prompt.shape[0] :] = prompt
        mask[b, width - prompt.shape[0] :] = 1
    return ids, mask


class _Clock:
    """Wall-clock marks; on CUDA the queue is drained first, so a mark is when the work is done."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def _runs(model, method: Method, scorer: Any, prompts: list[torch.Tensor], new_tokens: int, clock: _Clock):
    """The two ways of running ``prompts``, as callables returning (each prompt's first token, seconds until every
    prompt had its first token, seconds until every prompt had ``new_tokens`` tokens, the cache kept over real
    tokens). One by one, TTFT sums the prompts' prefills (what a prefill-only job would take); E2E is the whole
    sequential job."""
    ids, mask = left_padded_batch(prompts)

    def generate(batch: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, float, float]:
        begin = clock()
        logits, cache = prefill_with_cache(model, batch, attention_mask)
        first = token = logits.argmax(-1, keepdim=True)
        prefilled = clock()
        if new_tokens > 1:
            step = decode_step(model, cache, new_tokens - 1, fast=True)
            for _ in range(new_tokens - 1):
                token = step(token).argmax(-1, keepdim=True)
        return first[:, 0], prefilled - begin, clock() - begin

    def batched() -> tuple[torch.Tensor, float, float, float]:
        with torch.inference_mode(), method.applied(model, scorer):
            first, ttft, e2e = generate(ids, mask)
            return first, ttft, e2e, last_stats(model).kv_fraction if method.config else 1.0

    def one_by_one() -> tuple[torch.Tensor, float, float, float]:
        with torch.inference_mode(), method.applied(model, scorer):
            runs = [generate(p[None], None) for p in prompts]
        return torch.cat([r[0] for r in runs]), sum(r[1] for r in runs), sum(r[2] for r in runs), 1.0

    return {"one by one": one_by_one, "batched": batched}


def run_batch_bench(
    model: nn.Module,
    lengths: Sequence[int],
    batch_size: int,
    methods: Sequence[Method],
    out_dir: Path,
    repeats: int = 3,
    warmup: int = 1,
    proxies: Any = None,
    new_tokens: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> list[BatchRow]:
    """Time every method (``full`` among them; peers with a prefill of their own are refused) batched and one by
    one at every longest length; append rows to ``out_dir/rows.jsonl`` and return all rows, resumed ones included."""
    if batch_size < 2:
        raise ValueError(f"a batch benchmark needs --batch-size of at least 2, got {batch_size}")
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1 (the warm-up run gives the first tokens compared); got "
                         f"repeats={repeats}, warmup={warmup}")  # fmt: skip
    names = [m.name for m in methods]
    if "full" not in names:
        raise ValueError("the benchmark compares every method with the full model: add full to the methods")
    peers = [m.name for m in methods if m.peer is not None]
    if peers:
        raise ValueError(f"{', '.join(peers)}: peers with a prefill of their own take one prompt; batch SPTS configs")
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "rows.jsonl"
    done: dict[tuple, BatchRow] = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = BatchRow(**json.loads(line))
            done[(row.length, row.batch_size, row.method, row.mode)] = row
    scorers = {m.name: ffn_scorer(model, m.config, proxies) if m.config else None for m in methods}
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    rows: list[BatchRow] = []
    for length in tqdm(lengths, desc="lengths", disable=not progress):
        sizes = mixed_lengths(length, batch_size)
        # Drawn whether or not resumed, so every length gets the same prompts in any run.
        prompts = [torch.randint(1, model.config.vocab_size, (n,), generator=generator).to(device) for n in sizes]
        keys = [(length, batch_size, name, mode) for name in names for mode in MODES]
        if not all(k in done for k in keys):
            measured = _measure(model, methods, scorers, prompts, repeats, warmup, new_tokens, _Clock(device))
            with jsonl.open("a") as sink:
                for row in measured:
                    done[(row.length, row.batch_size, row.method, row.mode)] = row
                    sink.write(json.dumps(asdict(row)) + "\n")
        rows.extend(done[k] for k in keys)
    return rows


def _measure(model, methods, scorers, prompts, repeats, warmup, new_tokens, clock) -> list[BatchRow]:
    """Warm-up runs of every call (the last one gives the first tokens compared and SPTS's statistics), then
    ``repeats`` rounds with the calls interleaved, so drift hits every method and mode alike."""
    calls = {
        (m.name, mode): call
        for m in methods
        for mode, call in _runs(model, m, scorers[m.name], prompts, new_tokens, clock).items()
    }
    first: dict[tuple, torch.Tensor] = {}
    kv: dict[str, float] = {}
    for _ in range(warmup):
        for (name, mode), call in calls.items():
            first[name, mode], _, _, fraction = call()
            if mode == "batched":
                kv[name] = fraction
    seconds: dict[tuple, list[tuple[float, float]]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            seconds[key].append(call()[1:3])
    median = {
        key: (statistics.median(t for t, _ in v), statistics.median(e for _, e in v)) for key, v in seconds.items()
    }
    rows = []
    for (name, mode), (ttft, e2e) in median.items():
        full_ttft, full_e2e = median["full", mode]
        ttfts = [t for t, _ in seconds[name, mode]]
        rows.append(
            BatchRow(
                length=max(p.shape[0] for p in prompts),
                batch_size=len(prompts),
                prompt_lengths=[p.shape[0] for p in prompts],
                method=name,
                mode=mode,
                ttft_median_s=ttft,
                ttft_spread_s=max(ttfts) - min(ttfts),
                prompts_per_s=len(prompts) / ttft,
                speedup=full_ttft / ttft,
                kv_fraction=kv[name],
                same_first_tokens=bool(torch.equal(first[name, "batched"], first[name, "one by one"])),
                new_tokens=new_tokens,
                e2e_median_s=e2e if new_tokens else None,
                e2e_prompts_per_s=len(prompts) / e2e if new_tokens else None,
                e2e_speedup=full_e2e / e2e if new_tokens else None,
            )
        )
    return rows


def write_batch_reports(rows: Sequence[BatchRow], out_dir: Path, header: str) -> None:
    """``summary.json``, ``table.md`` and, with matplotlib, ``throughput.png`` (prompts/s per method and mode)."""
    (out_dir / "summary.json").write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    one_by_one = {(r.length, r.method): r for r in rows if r.mode == "one by one"}

    def gain(r: BatchRow) -> str:
        alone = one_by_one.get((r.length, r.method))
        return f"{alone.ttft_median_s / r.ttft_median_s:.2f}x" if r.mode == "batched" and alone else "-"

    def fmt(value: float | None, spec: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{unit}"

    lines = [
        header,
        "",
        "TTFT: until every prompt has its first token. E2E: until every prompt has its new tokens (greedy, static "
        "decoder). Speedups against the full model run the same way; batching gain: one by one over batched.",
        "",
        "| longest | batch | prompt lengths | method | mode | TTFT (s) | spread (s) | prompts/s | TTFT speedup | "
        "batching gain | E2E (s) | E2E prompts/s | E2E speedup | KV kept | first tokens as alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e2e_label = f"{fmt(r.e2e_median_s, '.2f')}" + (f" ({r.new_tokens} tokens)" if r.e2e_median_s else "")
        lines.append(
            f"| {r.length} | {r.batch_size} | {', '.join(map(str, r.prompt_lengths))} | {r.method} | {r.mode} | "
            f"{r.ttft_median_s:.2f} | {r.ttft_spread_s:.2f} | {r.prompts_per_s:.3f} | {r.speedup:.2f}x | {gain(r)} | "
            f"{e2e_label} | {fmt(r.e2e_prompts_per_s, '.3f')} | {fmt(r.e2e_speedup, '.2f', 'x')} | "
            f"{r.kv_fraction:.0%} | {'yes' if r.same_first_tokens else 'NO'} |"
        )
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    series = dict.fromkeys((r.method, r.mode) for r in rows)
    for method, mode in series:
        points = sorted((r.length, r.prompts_per_s) for r in rows if (r.method, r.mode) == (method, mode))
        axis.plot(
            *zip(*points, strict=True), marker="o", ls="-" if mode == "batched" else "--", label=f"{method}, {mode}"
        )
    axis.set_xlabel(f"longest prompt (tokens; batch of {rows[0].batch_size}, lengths down to half of it)")
    axis.set_ylabel("prompts per second to first token")
    axis.set_xscale("log", base=2)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / "throughput.png", dpi=120)
    plt.close(figure)
