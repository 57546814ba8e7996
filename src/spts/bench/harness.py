"""Prefill benchmark: the full model vs SPTS and its ablations, side by side, over prompt lengths.

Every method runs on the same model and the same prompt in one process; calls are interleaved
per repeat after warm-up, and medians are kept (CUDA events on GPU). Rows are appended to a JSONL
file as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import spts
from spts.bench.timing import time_calls
from spts.config import SPTSConfig
from spts.runtime import cache_nbytes

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


Method = tuple[SPTSConfig | None, str]


def ablations(config: SPTSConfig) -> dict[str, Method]:
    """The methods compared: the full model, PAP only, PAP + FFN skipping, the whole of SPTS, and the
    ceiling: SPTS's schedule with free random selection (what the schedule allows at zero probe cost)."""
    return {
        "full": (None, "probe"),
        "pap": (config.with_(skip_ffn=False, prune=False), "probe"),
        "pap+ffn": (config.with_(prune=False), "probe"),
        "spts": (config, "probe"),
        "ceiling": (config, "random"),
    }


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


def _prefill_fn(model: nn.Module, ids: torch.Tensor, method: Method, proxies: Any) -> Callable[[], Any]:
    config, selection = method

    def run() -> Any:
        with torch.inference_mode():
            if config is None:
                return model(ids, use_cache=True, logits_to_keep=1)
            with spts.enabled(model, config, proxies, selection):
                return model(ids, use_cache=True, logits_to_keep=1)

    return run


def _measure_once(model: nn.Module, ids: torch.Tensor, method: Method, proxies: Any) -> dict[str, Any]:
    """Cache size, probe share and peak memory of one extra, untimed call."""
    config, selection = method
    device = ids.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probe_share, kv_fraction = 0.0, 1.0
    with torch.inference_mode():
        if config is None:
            out = model(ids, use_cache=True, logits_to_keep=1)
        else:
            with spts.enabled(model, config, proxies, selection):
                out = model(ids, use_cache=True, logits_to_keep=1)
                stats = spts.last_stats(model)
                probe_share, kv_fraction = stats.probe_time_share, stats.kv_fraction
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "kv_cache_bytes": cache_nbytes(out.past_key_values),
        "kv_fraction": kv_fraction,
        "probe_time_share": probe_share,
        "peak_memory_bytes": peak,
    }


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
) -> list[BenchRow]:
    """Time every method of :func:`ablations` at every length; append rows to ``out_dir/rows.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "rows.jsonl"
    done = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = BenchRow(**json.loads(line))
            done[(row.length, row.method)] = row
    methods = ablations(config)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    for length in tqdm(lengths, desc="lengths", disable=not progress):
        if all((length, m) in done for m in methods):
            continue
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator).to(device)
        calls = {name: _prefill_fn(model, ids, method, proxies) for name, method in methods.items()}
        timings = time_calls(calls, device, repeats=repeats, warmup=warmup)
        full = timings["full"].median
        with jsonl.open("a") as sink:
            for name, method in methods.items():
                extra = _measure_once(model, ids, method, proxies)
                row = BenchRow(
                    length=length,
                    method=name,
                    ttft_median_s=timings[name].median,
                    ttft_spread_s=timings[name].spread,
                    speedup=full / timings[name].median,
                    **extra,
                )
                done[(length, name)] = row
                sink.write(json.dumps(asdict(row)) + "\n")
    return [done[(length, m)] for length in lengths for m in methods]


def write_reports(rows: Sequence[BenchRow], out_dir: Path, header: str) -> None:
    """``summary.json``, ``table.md`` and, when matplotlib is installed, ``speedup.png``."""
    (out_dir / "summary.json").write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    lines = [
        header,
        "",
        "| length | method | TTFT median (s) | spread (s) | speedup | KV cache (MiB) | KV kept | probe share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.length} | {r.method} | {r.ttft_median_s:.3f} | {r.ttft_spread_s:.3f} | {r.speedup:.2f}x | "
            f"{r.kv_cache_bytes / 2**20:.1f} | {r.kv_fraction:.0%} | {r.probe_time_share:.1%} |"
        )
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r.method for r in rows):
        points = [(r.length, r.speedup) for r in rows if r.method == method]
        axis.plot(*zip(*points, strict=True), marker="o", label=method)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompt tokens")
    axis.set_ylabel("TTFT speedup vs full")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / "speedup.png", dpi=120)
    plt.close(figure)
