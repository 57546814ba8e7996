"""Prefill benchmark: the full model vs SPTS and its ablations (or any ``spts eval`` methods, peers included),
side by side, over prompt lengths.

Every method runs on the same model and the same prompt in one process; calls are interleaved
per repeat after warm-up, and medians are kept (CUDA events on GPU). Rows are appended to a JSONL
file as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spts.adapters import adapter_for
from spts.config import SPTSConfig
from spts.generation import decode_step
from spts.methods import Method, resolve_methods
from spts.runtime import cache_nbytes
from spts.runtime.decode import StaticDecoder
from spts.runtime.engine import ffn_scorer, last_stats
from spts.runtime.timing import IntervalTimer, time_calls

__all__ = ["SHAPES", "BenchRow", "ablations", "bench_methods", "random_model", "run_bench"]

# Real architectures at real shapes; random weights time them faithfully (no checkpoint needed).
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.1-8b": (
        "llama",
        dict(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
        ),
    ),
    "qwen2.5-7b": (
        "qwen2",
        dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
        ),
    ),
    "qwen2.5-0.5b": (
        "qwen2",
        dict(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        ),
    ),
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
        ),
    ),
}  # fmt: skip


def random_model(shape: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """A randomly initialised model with the architecture and shape of ``shape`` (see ``SHAPES``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {', '.join(SHAPES)}")
    model_type, kwargs = SHAPES[shape]
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


ABLATIONS = "full,pap,pap+ffn,spts,ceiling"
"""The methods compared by default (``spts bench --methods``): the full model, PAP only, PAP + FFN skipping, the
whole of SPTS, and the ceiling: SPTS's schedule with free random selection (what it allows at zero probe cost)."""


def ablations(config: SPTSConfig) -> dict[str, Method]:
    """The default methods for the base ``config``, by name."""
    return {m.name: m for m in resolve_methods(ABLATIONS, config)}


def bench_methods(specs: str, config: SPTSConfig, model: nn.Module) -> list[Method]:
    """The methods ``specs`` names (as ``spts eval --methods``; peers need ``model``), ``full`` among them."""
    methods = resolve_methods(specs, config, model)
    _require_baseline(m.name for m in methods)
    return methods


def _require_baseline(names: Iterable[str]) -> None:
    if "full" not in set(names):
        raise ValueError("the benchmark compares every method with the full model: add full to the methods")


@dataclass(frozen=True)
class BenchRow:
    """One method at one prompt length."""

    length: int
    method: str
    ttft_median_s: float
    ttft_spread_s: float
    speedup: float
    kv_cache_bytes: int
    kv_fraction: float
    probe_time_share: float
    peak_memory_bytes: int | None  # None on CPU, where torch has no per-call peak
    e2e_16_s: float | None = None
    """Median time from the prompt to the 16th new token (prefill + 15 greedy steps); None if not measured."""
    e2e_128_s: float | None = None
    decode_ms_per_token: float | None = None
    """Median of (time to token 128 - time to token 1) / 127: decoding over this method's cache."""
    layer_group_seconds: dict[str, float] | None = None
    """Seconds per layer group (full layers, each stage, the rest) in one extra prefill, not a timed repeat."""
    sparse_density: float | None = None
    """Block-sparse attention: computed share of causal key blocks, mean over its layers (None: not sparse)."""
    estimate_time_share: float | None = None
    """Block-sparse attention: share of the prefill its estimate and block selection took."""


def _prefill_fn(model: nn.Module, ids: torch.Tensor, method: Method, proxies: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode(), method.applied(model, proxies):
            return method.prefill(model, ids)

    return run


def _measure_once(
    model: nn.Module, ids: torch.Tensor, method: Method, proxies: Any, config: SPTSConfig
) -> dict[str, Any]:
    """Of one extra, untimed call: cache size, probe share, peak memory, and the prefill split by layer group
    (the base ``config``'s groups for every method alike, plus embedding, final norm and LM head) from
    timers hooked around each decoder layer."""
    device = ids.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probe_share, kv_fraction, sparse = 0.0, 1.0, {}
    layers = adapter_for(model).layers()
    timers = [IntervalTimer(device) for _ in layers]
    handles = []
    for layer, timer in zip(layers, timers, strict=True):
        handles.append(layer.register_forward_pre_hook(lambda *_, t=timer: t.start()))
        handles.append(layer.register_forward_hook(lambda *_, t=timer: t.stop()))
    total = IntervalTimer(device)
    try:
        with torch.inference_mode(), method.applied(model, proxies):
            total.start()
            _, cache = method.prefill(model, ids)
            total.stop()
            kv_fraction = method.kv_fraction(model, cache, ids.shape[-1])
            if method.config is not None:
                probe_share = last_stats(model).probe_time_share
                summary = last_stats(model).to_dict()
                if "sparse_density_per_layer" in summary:
                    densities = summary["sparse_density_per_layer"].values()
                    sparse = {
                        "sparse_density": sum(densities) / len(densities),
                        "estimate_time_share": summary["sparse_estimate_time_share"],
                    }
    finally:
        for handle in handles:
            handle.remove()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    groups = {name: sum(timers[i].seconds() for i in members) for name, members in _layer_groups(config, len(layers))}
    groups["embedding, norm, LM head"] = max(0.0, total.seconds() - sum(groups.values()))
    return {
        "kv_cache_bytes": cache_nbytes(cache),
        "kv_fraction": kv_fraction,
        "probe_time_share": probe_share,
        "peak_memory_bytes": peak,
        "layer_group_seconds": groups,
        **sparse,
    }


def _generation_timepoints(
    model: nn.Module,
    ids: torch.Tensor,
    method: Method,
    proxies: Any,
    new_tokens: int,
    static: bool,
    decoder: StaticDecoder | None,
) -> tuple[dict[int, float], StaticDecoder | None]:
    """Seconds from the start of the prefill to new token 1, 16 and ``new_tokens`` (greedy, no early stop,
    so every method does the same work), read from marks taken during one generation (CUDA events on GPU,
    resolved after the loop, so no sync slows it down).

    ``static`` decodes through a :class:`StaticDecoder`, else through the model's own step. The decoder
    is built from this generation's cache when ``decoder`` is None (CUDA graph included), else the cache
    is loaded into it (timed); it is returned for the next generation of the same method."""
    marks: dict[int, Any] = {}
    cuda = ids.device.type == "cuda"

    def mark(n: int) -> None:
        if cuda:
            marks[n] = torch.cuda.Event(enable_timing=True)
            marks[n].record()
        else:
            marks[n] = time.perf_counter()

    with torch.inference_mode(), method.applied(model, proxies):
        if cuda:
            torch.cuda.synchronize(ids.device)
        mark(0)
        logits, cache = method.prefill(model, ids)
        token = logits.argmax(-1, keepdim=True)
        mark(1)
        if not static:
            step = decode_step(model, cache, new_tokens, fast=False)
        elif decoder is None:
            decoder = StaticDecoder(model, cache, new_tokens)
            step = decoder.step
        else:
            decoder.load(cache)
            step = decoder.step
        for n in range(2, new_tokens + 1):
            token = step(token).argmax(-1, keepdim=True)
            if n in (16, new_tokens):
                mark(n)
        if cuda:
            torch.cuda.synchronize(ids.device)
    if cuda:
        return {n: marks[0].elapsed_time(e) / 1000.0 for n, e in marks.items()}, decoder
    return {n: t - marks[0] for n, t in marks.items()}, decoder


def _layer_groups(config: SPTSConfig, num_layers: int) -> list[tuple[str, range]]:
    starts = [config.start_layer, *config.stage_boundaries, num_layers]
    groups = [(f"layers 0-{config.start_layer - 1} (full)", range(config.start_layer))]
    for stage, (a, b) in enumerate(itertools.pairwise(starts)):
        groups.append((f"stage {stage}: layers {a}-{b - 1}", range(a, b)))
    return groups


def run_bench(
    model: nn.Module,
    config: SPTSConfig,
    lengths: Sequence[int],
    out_dir: Path,
    repeats: int = 3,
    warmup: int = 1,
    proxies: Any = None,
    seed: int = 0,
    progress: bool = True,
    decode: bool = True,
    static_decode: bool = True,
    methods: Sequence[Method] | None = None,
    prompt: Callable[[int], torch.Tensor] | None = None,
) -> list[BenchRow]:
    """Time every method (default: :func:`ablations` of ``config``; else ``spts eval`` methods, see
    :func:`spts.methods.resolve_methods`, ``full`` among them as the baseline) at every length; append rows to
    ``out_dir/rows.jsonl``.

    Per method: TTFT (prefill with ``logits_to_keep=1``, interleaved repeats, median); with ``decode``,
    ``repeats`` greedy generations of 128 tokens giving E2E latency to tokens 16 and 128 and decode
    ms/token over the method's own cache, every method through the same decoder: a :class:`StaticDecoder`
    (``static_decode``, CUDA graph on GPU) or the model's own step; a per-layer-group split of one prefill,
    cache size, probe share and peak memory. ``prompt``: the (1, length) token ids of a prompt of ``length`` tokens
    (default: random tokens; block-sparse attention needs real text, whose attention it estimates).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "rows.jsonl"
    done = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = BenchRow(**json.loads(line))
            done[(row.length, row.method)] = row
    methods = {m.name: m for m in methods} if methods else ablations(config)
    _require_baseline(methods)
    # LTP proxies are loaded, checked and moved once, not inside every timed call.
    scorers = {name: ffn_scorer(model, m.config, proxies) if m.config else None for name, m in methods.items()}
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    for length in tqdm(lengths, desc="lengths", disable=not progress):
        if all((length, m) in done for m in methods):
            continue
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator).to(device)
        if prompt is not None:
            ids = prompt(length).to(device)
        calls = {name: _prefill_fn(model, ids, method, scorers[name]) for name, method in methods.items()}
        timings = time_calls(calls, device, repeats=repeats, warmup=warmup)
        full = timings["full"].median
        generation: dict[str, dict[str, float | None]] = {name: {} for name in methods}
        if decode:
            for name, method in methods.items():
                # One method at a time, so that only one method's static decoder is held; its first
                # generation builds it (and captures the CUDA graph) and is not timed.
                decoder, runs = None, []
                for repeat in range(max(warmup, 1) + repeats):
                    points, decoder = _generation_timepoints(
                        model, ids, method, scorers[name], 128, static_decode, decoder
                    )
                    if repeat >= max(warmup, 1):
                        runs.append(points)
                del decoder
                generation[name] = {
                    "e2e_16_s": statistics.median(p[16] for p in runs),
                    "e2e_128_s": statistics.median(p[128] for p in runs),
                    "decode_ms_per_token": 1000 * statistics.median((p[128] - p[1]) / 127 for p in runs),
                }
        with jsonl.open("a") as sink:
            for name, method in methods.items():
                extra = _measure_once(model, ids, method, scorers[name], config)
                row = BenchRow(
                    length=length,
                    method=name,
                    ttft_median_s=timings[name].median,
                    ttft_spread_s=timings[name].spread,
                    speedup=full / timings[name].median,
                    **generation[name],
                    **extra,
                )
                done[(length, name)] = row
                sink.write(json.dumps(asdict(row)) + "\n")
    return [done[(length, m)] for length in lengths for m in methods]
