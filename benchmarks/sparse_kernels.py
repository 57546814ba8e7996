"""Block-sparse attention kernels against the dense causal attention a layer runs today (docs/sparse.md).

One attention call of a model's head shape (default: Qwen2.5-0.5B's, 14 query / 2 KV heads, d=64) over random
queries and keys: the model's own SDPA call (causal, grouped-query), the estimate with its block selection, and each
block-sparse kernel on random selections of several densities (the sink block and local band kept, as the policy
keeps them). Calls are interleaved per repeat after a warm-up; the fastest repeat is kept (interference on a shared
machine only adds time). Writes ``kernels.json`` and ``table.md``.

    python benchmarks/sparse_kernels.py --lengths 8192,16384 --out benchmarks/results/sparse_kernels_cpu
    python benchmarks/sparse_kernels.py --device cuda --dtype bfloat16 --heads 32 --kv-heads 8 --dim 128 \\
        --lengths 32768,131072 --out runs/sparse_kernels_gpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spts.machine import run_context
from spts.policies.sparse import antidiagonal_block_mass, density, kept_counts, rank_blocks, round_up_counts
from spts.runtime.sparse_kernels import block_sparse_attention


def _time(calls: dict, device: torch.device, repeats: int) -> dict[str, float]:
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in calls.values():
        once(fn)
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            best[name] = min(best[name], once(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="8192,16384")
    parser.add_argument("--densities", default="0.1,0.2,0.3,0.45,0.6")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--kernels", default="gather,flex")
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    scaling = args.dim**-0.5
    rows = []
    for length in (int(n) for n in args.lengths.split(",")):
        # Laid out as transformers hands them to attention functions: (B, T, H, d) projections, transposed.
        query = torch.randn(1, length, args.heads, args.dim, generator=generator).to(device, dtype).transpose(1, 2)
        key, value = (
            torch.randn(1, length, args.kv_heads, args.dim, generator=generator).to(device, dtype).transpose(1, 2)
            for _ in range(2)
        )

        def estimate(q=query, k=key):
            mass = antidiagonal_block_mass(q, k, args.block, scaling)
            return round_up_counts(kept_counts(mass, rank_blocks(mass), 0.9, 0.0))

        calls = {
            "sdpa": lambda q=query, k=key, v=value: F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scaling, enable_gqa=True
            ),
            "estimate": estimate,
        }
        blocks = -(-length // args.block)
        kept = {}
        for target in (float(d) for d in args.densities.split(",")):
            mass = torch.rand(1, args.kv_heads, blocks, blocks, generator=generator).to(device)
            order = rank_blocks(mass)
            counts = round_up_counts(kept_counts(mass, order, 1e-6, target))
            kept[target] = density(counts)
            for kernel in args.kernels.split(","):
                calls[f"{kernel}@{target:g}"] = (
                    lambda kernel=kernel, order=order, counts=counts, q=query, k=key, v=value: block_sparse_attention(
                        kernel, q, k, v, order, counts, args.block, scaling
                    )
                )
        seconds = _time(calls, device, args.repeats)
        dense = seconds["sdpa"]
        for name, value_s in seconds.items():
            kernel, _, target = name.partition("@")
            rows.append(
                {
                    "length": length,
                    "call": kernel,
                    "target_density": float(target) if target else None,
                    "density": kept[float(target)] if target else None,
                    "seconds": value_s,
                    "speedup_vs_sdpa": dense / value_s,
                }
            )
        print(json.dumps(rows[-len(seconds) :], indent=1), flush=True)
    context = run_context(dtype)
    (args.out / "kernels.json").write_text(json.dumps({"context": context, "args": vars(args) | {"out": str(args.out)},
                                                       "rows": rows}, indent=2))  # fmt: skip
    lines = [
        f"Block-sparse attention kernels vs SDPA causal, {args.heads} query / {args.kv_heads} KV heads, d={args.dim}, "
        f"block {args.block}, {args.device} {args.dtype}; {context}; fastest of {args.repeats} interleaved repeats. "
        f"Command: `python benchmarks/sparse_kernels.py --lengths {args.lengths} --densities {args.densities} "
        f"--block {args.block} --kernels {args.kernels} --device {args.device} --dtype {args.dtype} --out {args.out}`",
        "",
        "| tokens | call | density kept | seconds | speedup vs SDPA causal |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        kept_share = "-" if r["density"] is None else f"{r['density']:.0%}"
        lines.append(
            f"| {r['length']} | {r['call']} | {kept_share} | {r['seconds']:.3f} | {r['speedup_vs_sdpa']:.2f}x |"
        )
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
