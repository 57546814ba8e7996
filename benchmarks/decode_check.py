"""Check and time the static decoder against the model's own decode step, over full and SPTS caches.

For a model shape with random weights (``spts.bench.SHAPES``) and one prompt length, per cache (the
full model's, SPTS's): greedy tokens and ms/token of (a) transformers' own step, (b) the static
decoder stepping eagerly, (c) the same in the masked, chunked form a graph runs, (d) that form as
a CUDA graph (GPU only); whether (b)-(d) give (a)'s tokens, and the largest logit difference. On
GPU it also measures the copy bandwidth and the memory floor of a step (bytes of weights and cache
read per token / that bandwidth).

    python benchmarks/decode_check.py --shape smollm2-135m --dtype float32 --length 4096   # exactness
    python benchmarks/decode_check.py --shape llama-3.1-8b --length 32768 --out runs/decode  # speed, GPU

Writes ``decode_check.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import spts
from spts.bench import random_model
from spts.generation import decode_step, prefill_with_cache
from spts.runtime import cache_nbytes


def _timed_greedy(step, logits: torch.Tensor, n: int, cuda: bool) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """n greedy tokens from ``logits``; their logits; median ms per step."""
    tokens, all_logits, seconds = [], [], []
    for _ in range(n):
        tokens.append(logits.argmax(-1, keepdim=True))
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            logits = step(tokens[-1])
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            logits = step(tokens[-1])
            seconds.append(time.perf_counter() - begin)
        all_logits.append(logits.float())
    return torch.cat(tokens, 1), all_logits, 1000 * statistics.median(seconds[2:] or seconds)


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        target.copy_(source)
    end.record()
    end.synchronize()
    return 2 * 10 * source.numel() / (start.elapsed_time(end) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16; default: bfloat16 on GPU, else float32")
    parser.add_argument("--preset", default=None, help="SPTS preset; default: derived for the model")
    parser.add_argument("--out", type=Path, default=Path("runs/decode_check"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    model = random_model(args.shape, dtype, str(device))
    config = spts.SPTSConfig.preset(args.preset) if args.preset else spts.SPTSConfig.for_model(model)
    ids = torch.randint(0, model.config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = _copy_bandwidth(device) if cuda else None
    report = {
        "shape": args.shape, "length": args.length, "new_tokens": args.new_tokens, "dtype": str(dtype),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "config": config.name or str(config),
        "copy_bandwidth_gb_s": bandwidth / 1e9 if bandwidth else None, "caches": {},
    }  # fmt: skip
    paths = ["model step", "static, eager", "static, masked"] + (["static, CUDA graph"] if cuda else [])
    for name, method in (("full", None), ("spts", config)):
        results, reference = {}, None
        for path in paths:
            # Each path decodes from its own prefill: the model's step grows the cache it is given.
            with torch.inference_mode(), spts.enabled(model, method) if method else contextlib.nullcontext():
                logits, cache = prefill_with_cache(model, ids)
            cache_bytes = cache_nbytes(cache)
            if path == "model step":
                step = decode_step(model, cache, args.new_tokens, fast=False)
            else:
                graph, masked = path.endswith("graph"), path.endswith("masked")
                step = spts.StaticDecoder(model, cache, args.new_tokens, cuda_graph=graph, static_shapes=masked).step
            with torch.inference_mode():
                tokens, all_logits, ms = _timed_greedy(step, logits, args.new_tokens, cuda)
            entry: dict = {"ms_per_token": ms}
            if reference is None:
                reference = (tokens, all_logits)
            else:
                agree = (tokens == reference[0]).all(0)
                first = None if bool(agree.all()) else int((~agree).nonzero()[0])
                # Logits are comparable up to the first different token (after it, inputs differ).
                steps = len(all_logits) if first is None else first + 1
                entry["same_tokens"], entry["first_difference"] = first is None, first
                entry["max_logit_difference"] = max(
                    float((a - b).abs().max()) for a, b in zip(all_logits[:steps], reference[1][:steps], strict=True)
                )
            results[path] = entry
            del cache, step
        results["kv_cache_bytes"] = cache_bytes
        # A step reads every weight and the whole cache once: the time that takes at copy bandwidth.
        results["memory_floor_ms_per_token"] = 1000 * (weight_bytes + cache_bytes) / bandwidth if bandwidth else None
        report["caches"][name] = results
        print(name, json.dumps(results, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
