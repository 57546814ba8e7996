"""Check and time the static decoder against the model's own decode step, over full and SPTS caches.

For a model shape with random weights (``--shape``, ``spts.bench.SHAPES``, random prompt) or a real
zoo checkpoint (``--model``, prompt: held-out essay text cut to ``--length`` tokens), and one prompt
length, per cache (the full model's, SPTS's): greedy tokens and ms/token of (a) transformers' own
step, (b) the static decoder stepping eagerly (SDPA over the filled part), (c) the masked, chunked
form a graph runs, (d) that form as a CUDA graph (GPU only). For (b)-(d):

* free-running greedy decoding: whether it gives (a)'s tokens, the first token that differs, and
  the largest logit difference over the steps before it (the steps whose inputs are still equal);
* teacher-forced on (a)'s tokens (every step sees the same inputs, so all steps are comparable):
  the largest logit difference from (a) and how often the argmax agrees with (a)'s;
* teacher-forced, for (b) and (c) (eager steps): the relative distance of each layer's attention
  output from float32 attention over the same queries, keys and values, mean and max over layers
  and steps: the attention arithmetic's own error (in float32 runs, 0 for SDPA, under 1e-5 masked);
* with ``--fp32-reference`` (meant for bfloat16 runs): the largest and the mean absolute logit
  difference, teacher-forced, from a float32 copy of the model stepping over the same prefill cache
  upcast to float32, for (a)-(d) alike; it tells which form is nearer exact arithmetic when they
  disagree.

On GPU it also measures the copy bandwidth and the memory floor of a step (bytes of weights and
cache read per token / that bandwidth).

    python benchmarks/decode_check.py --shape smollm2-135m --dtype float32 --length 4096   # exactness
    python benchmarks/decode_check.py --shape llama-3.1-8b --length 32768 --out runs/decode  # speed, GPU
    python benchmarks/decode_check.py --model smollm2-135m --dtype bfloat16 --length 4096 \\
        --new-tokens 32 --fp32-reference --out runs/decode_bf16                          # real weights

Writes ``decode_check.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

import spts
from spts.bench import random_model
from spts.generation import decode_step, prefill_with_cache
from spts.runtime import cache_nbytes


def _timed_greedy(
    step, logits: torch.Tensor, n: int, cuda: bool, forced: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """n greedy tokens from ``logits`` (or, if given, ``forced``'s n tokens fed instead); the logits of
    every step; median ms per step."""
    tokens, all_logits, seconds = [], [], []
    for k in range(n):
        tokens.append(logits.argmax(-1, keepdim=True) if forced is None else forced[:, k : k + 1])
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


def _max_difference(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> float | None:
    if not logits:
        return None
    return max(float((a - b).abs().max()) for a, b in zip(logits, reference, strict=True))


def _mean_difference(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Mean absolute logit difference over steps and vocabulary: less noisy than the largest one."""
    return statistics.mean(float((a - b).abs().mean()) for a, b in zip(logits, reference, strict=True))


def _float32_cache(cache):
    """A copy of a prefill's cache with keys and values upcast to float32 (same tokens, same values)."""
    upcast = copy.deepcopy(cache)
    for layer in upcast.layers:
        layer.keys, layer.values = layer.keys.float(), layer.values.float()
    return upcast


def _prefill(model, ids: torch.Tensor, method):
    with torch.inference_mode(), spts.enabled(model, method) if method else contextlib.nullcontext():
        return prefill_with_cache(model, ids)


def _record_attention_error(decoder: spts.StaticDecoder) -> list[float]:
    """Have an eager decoder record, per layer and step, its attention output's relative distance
    from float32 attention over the same (rounded) queries, keys and values: the error of the
    attention arithmetic alone, which the logits mix with every other op's rounding."""
    errors: list[float] = []
    attend = decoder._attend

    def recording(layer_idx: int, queries: torch.Tensor, scaling: float) -> torch.Tensor:
        out = attend(layer_idx, queries, scaling)
        n = decoder._host_prefix[layer_idx] + decoder._host_step + 1
        keys, values = (buffer[layer_idx][:, :, :n].float() for buffer in (decoder.keys, decoder.values))
        batch, kv_heads, _, head_dim = keys.shape
        grouped = queries.float().reshape(batch, kv_heads, -1, head_dim)
        exact = F.scaled_dot_product_attention(grouped, keys, values, scale=scaling)
        exact = exact.reshape(batch, -1, 1, head_dim).transpose(1, 2)
        errors.append(float((out.float() - exact).norm() / exact.norm()))
        return out

    decoder._attend = recording
    return errors


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


def _essay_prompt(tokenizer, length: int) -> torch.Tensor:
    """The first ``length`` tokens of the held-out essays (text the model was not calibrated on)."""
    from spts.calibration.texts import essay_split

    ids = tokenizer("\n\n".join(essay_split("heldout")), return_tensors="pt").input_ids[:, :length]
    if ids.shape[1] < length:
        raise SystemExit(f"the held-out essays hold only {ids.shape[1]} tokens; use --length {ids.shape[1]} or less")
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", help="model shape with random weights (spts.bench)")
    parser.add_argument("--model", default=None, help="a zoo checkpoint (spts.zoo) instead of random weights")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16; default: bfloat16 on GPU, else float32")
    parser.add_argument("--preset", default=None, help="SPTS preset; default: derived for the model")
    parser.add_argument(
        "--fp32-reference", action="store_true", help="also compare every form with a float32 copy of the model"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/decode_check"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    if args.model:
        from spts.zoo import load_pretrained

        model, tokenizer = load_pretrained(args.model, dtype=dtype)
        model = model.to(device)
        ids = _essay_prompt(tokenizer, args.length)
    else:
        model = random_model(args.shape, dtype, str(device))
        ids = torch.randint(0, model.config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    model32 = copy.deepcopy(model).float() if args.fp32_reference else None
    config = spts.SPTSConfig.preset(args.preset) if args.preset else spts.SPTSConfig.for_model(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = _copy_bandwidth(device) if cuda else None
    report = {
        "model": args.model, "shape": None if args.model else args.shape,
        "prompt": "held-out essays" if args.model else "random tokens", "length": args.length,
        "new_tokens": args.new_tokens, "dtype": str(dtype),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "config": config.name or str(config),
        "copy_bandwidth_gb_s": bandwidth / 1e9 if bandwidth else None, "caches": {},
    }  # fmt: skip
    n = args.new_tokens
    paths = ["static, eager", "static, masked"] + (["static, CUDA graph"] if cuda else [])
    for name, method in (("full", None), ("spts", config)):
        # The model's step grows the cache it is given, so it decodes from its own prefill; the static
        # decoders copy theirs, so they share one.
        logits, cache = _prefill(model, ids, method)
        cache_bytes = cache_nbytes(cache)
        float32_cache = _float32_cache(cache) if model32 is not None else None
        with torch.inference_mode():
            ref_tokens, ref_logits, ms = _timed_greedy(decode_step(model, cache, n, fast=False), logits, n, cuda)
        results: dict = {"model step": {"ms_per_token": ms}}
        exact = None
        if model32 is not None:
            with torch.inference_mode():
                step32 = decode_step(model32, float32_cache, n, fast=False)
                _, exact, _ = _timed_greedy(step32, logits, n, False, forced=ref_tokens)
            results["model step"]["fp32_max_logit_difference"] = _max_difference(ref_logits, exact)
            results["model step"]["fp32_mean_logit_difference"] = _mean_difference(ref_logits, exact)
            del float32_cache, step32
        logits, cache = _prefill(model, ids, method)
        for path in paths:
            graph, masked = path.endswith("graph"), path.endswith("masked")
            decoder = spts.StaticDecoder(model, cache, n, cuda_graph=graph, static_shapes=masked)
            with torch.inference_mode():
                tokens, all_logits, ms = _timed_greedy(decoder.step, logits, n, cuda)
                decoder.load(cache)
                # A graph replays what it captured: the recording runs only in eager steps.
                attention_errors = [] if graph else _record_attention_error(decoder)
                _, forced_logits, _ = _timed_greedy(decoder.step, logits, n, cuda, forced=ref_tokens)
            agree = (tokens == ref_tokens).all(0)
            first = None if bool(agree.all()) else int((~agree).nonzero()[0])
            # all_logits[k] is the step fed token k: comparable while tokens 0..k are the same.
            steps = n if first is None else first
            argmax_agree = [
                bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(forced_logits, ref_logits, strict=True)
            ]
            entry = {
                "ms_per_token": ms,
                "same_tokens": first is None,
                "first_difference": first,
                "max_logit_difference": _max_difference(all_logits[:steps], ref_logits[:steps]),
                "forced_max_logit_difference": _max_difference(forced_logits, ref_logits),
                "forced_argmax_agreement": sum(argmax_agree) / n,
            }
            if attention_errors:
                entry["attention_relative_error_mean"] = statistics.mean(attention_errors)
                entry["attention_relative_error_max"] = max(attention_errors)
            if exact is not None:
                entry["fp32_max_logit_difference"] = _max_difference(forced_logits, exact)
                entry["fp32_mean_logit_difference"] = _mean_difference(forced_logits, exact)
            results[path] = entry
            del decoder
        del cache
        results["kv_cache_bytes"] = cache_bytes
        # A step reads every weight and the whole cache once: the time that takes at copy bandwidth.
        results["memory_floor_ms_per_token"] = 1000 * (weight_bytes + cache_bytes) / bandwidth if bandwidth else None
        report["caches"][name] = results
        print(name, json.dumps(results, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
