"""Calibrating the speed model on this machine, and timing chosen configs against the full model.

The speed model's parts (:mod:`spts.tuning.speed`) are timed on the model's last decoder layer, through the same
adapter calls a skipping layer makes, at four token counts up to the target length (``T/8 .. T``). Each timing
is the fastest of ``repeats`` interleaved samples (more rounds, up to three, while the times do not grow with the
token count), each sample the mean of as many back-to-back calls as fill ~50 ms. Why the fastest and not the
median: interference from other work on a shared machine only ever adds time, and a part that takes a
millisecond is at the scheduler's mercy (timeit's advice). What a prefill spends outside the layers is timed with
every layer's forward replaced by the identity. The result is cached as ``speed_model.json`` in the output
folder, keyed by model shape, device, threads, dtype, torch version, attention backend, FFN policy and length.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.config import SPTSConfig
from spts.policies import FFNScorer
from spts.runtime.timing import time_calls
from spts.tuning.sparse_speed import SPARSE_PARTS, sparse_part_calls
from spts.tuning.speed import FILE, SpeedModel, fit_polynomial, speed_key

DEGREES = {"attention": 2, "ffn": 1, "probe": 1, "move": 1, "ffn_score": 1}
DEGREES.update(dict.fromkeys(SPARSE_PARTS, 2))
MAX_ROUNDS = 3
"""Rounds of ``repeats`` samples at most, while the timings do not grow with the token count (a busy machine)."""

logger = logging.getLogger(__name__)


def _plausible(best: Mapping[tuple[str, int], float]) -> bool:
    """Whether attention and FFN times grow with the token count (within 10%): what undisturbed timings do."""
    for part in ("attention", "ffn"):
        times = [seconds for (name, _), seconds in sorted(best.items(), key=lambda kv: kv[0][1]) if name == part]
        if any(a > 1.1 * b for a, b in itertools.pairwise(times)):
            return False
    return True


def token_counts(length: int) -> list[int]:
    return sorted({max(16, length // 8), max(16, length // 4), max(16, length // 2), length})


def fastest_seconds(
    calls: Mapping[Any, Any], device: torch.device, repeats: int, sample_seconds: float = 0.05
) -> dict[Any, float]:
    """Seconds per call of each callable: the fastest of ``repeats`` interleaved samples, each the mean of as many
    back-to-back calls as fill about ``sample_seconds`` (sized by a first, warm-up call)."""
    loops = {}
    for name, fn in calls.items():
        once = _elapsed(fn, device, 1)
        loops[name] = max(1, min(200, math.ceil(sample_seconds / max(once, 1e-7))))
    samples: dict[Any, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name].append(_elapsed(fn, device, loops[name]) / loops[name])
    return {name: min(values) for name, values in samples.items()}


def _elapsed(fn: Any, device: torch.device, loops: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_speed_model(
    model: nn.Module,
    length: int,
    scorer: FFNScorer | None = None,
    repeats: int = 5,
    ffn_policy: str = "attention",
    sparse_block: int | None = None,
) -> SpeedModel:
    """Time this model's parts at a few token counts up to ``length``, and its prefill outside the layers
    (``sparse_block``: also block-sparse attention's parts, for blocks of that many tokens)."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    timings: dict[str, dict[int, float]] = {name: {} for name in DEGREES}
    with torch.inference_mode():
        # Every (part, token count) in one interleaved round per repeat: a burst of interference then spoils one
        # sample of each rather than every sample of one token count.
        calls = {(name, n): fn for n in token_counts(length) for name, fn in _part_calls(model, n, scorer, generator)}
        scale: dict[Any, float] = {}  # the sparse kernel's timings become seconds per unit of density
        for n in token_counts(length) if sparse_block is not None else ():
            for name, fn, factor in sparse_part_calls(model, n, sparse_block, generator):
                calls[(name, n)], scale[(name, n)] = fn, factor
        best: dict[Any, float] = {}
        for _ in range(MAX_ROUNDS):
            for call, seconds in fastest_seconds(calls, device, repeats).items():
                best[call] = min(seconds, best.get(call, math.inf))
            if _plausible(best):
                break
        else:
            logger.warning(
                "spts tune: layer timings stayed implausible (a smaller token count slower than a larger one) after "
                "%d rounds; the machine is busy, so predicted speedups are rough: compare them with the measured ones",
                MAX_ROUNDS,
            )
        for (name, n), seconds in best.items():
            timings[name][n] = seconds * scale.get((name, n), 1.0)
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator).to(device)
        with _identity_layers(model):
            outside = fastest_seconds({"outside": lambda: model(ids, use_cache=False, logits_to_keep=1)}, device, 3)
    fits = {name: fit_polynomial(list(points), list(points.values()), DEGREES[name])
            for name, points in timings.items() if points}  # fmt: skip
    attention = adapter.attention(adapter.layers()[-1])
    sizes = {name: getattr(attention, name).weight.numel() for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    total = sum(sizes.values())
    samples: dict[str, Any] = {name: {str(n): s for n, s in points.items()} for name, points in timings.items()}
    samples["outside_layers"] = {str(length): outside["outside"]}
    return SpeedModel(
        num_layers=len(adapter.layers()),
        coefficients=fits,
        key_share=sizes["k_proj"] / total,
        value_share=sizes["v_proj"] / total,
        overhead_per_token=outside["outside"] / length,
        key=speed_key(model, length, ffn_policy, sparse_block),
        samples=samples,
    )


def _part_calls(
    model: nn.Module, n: int, scorer: FFNScorer | None, generator: torch.Generator
) -> list[tuple[str, Any]]:
    """Each part of the last layer over ``n`` tokens, as a callable (random inputs: the work is dense)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    adapter = adapter_for(model)
    idx = len(adapter.layers()) - 1
    layer = adapter.layers()[idx]
    attention = adapter.attention(layer)
    parameter = next(model.parameters())
    device = parameter.device
    implementation = model.config._attn_implementation
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    x = torch.randn(1, n, model.config.hidden_size, generator=generator).to(device, parameter.dtype)
    cos, sin = adapter.rotary()(x, torch.arange(n, device=device)[None])
    mask = _eager_causal_mask(n, x) if implementation == "eager" else None
    keys = adapter.keys(layer, adapter.input_norm(layer, x), cos, sin)
    query = adapter.queries(layer, adapter.input_norm(layer, x[:, -1:]), cos[:, -1:], sin[:, -1:])
    rows = torch.arange(n, device=device)[None]
    scores = torch.rand(1, n, generator=generator).to(device)

    def attention_block() -> torch.Tensor:
        # What a full layer's attention does (and a skipping layer's over its active tokens).
        normed = adapter.input_norm(layer, x)
        q, k = adapter.queries(layer, normed, cos, sin), adapter.keys(layer, normed, cos, sin)
        out, _ = attend(attention, q, k, adapter.values(layer, normed), mask, dropout=0.0, scaling=attention.scaling)
        return adapter.attention_output(layer, out)

    calls = {
        "attention": attention_block,
        "ffn": lambda: adapter.ffn(layer, adapter.post_attention_norm(layer, x)),
        "probe": lambda: _probe(query, keys, attention.scaling),
        "move": lambda: _move(x, rows),
    }
    if scorer is not None and scorer.needs_inputs:
        calls["ffn_score"] = lambda: scorer.score(idx, adapter.post_attention_norm(layer, x), scores)
    return list(calls.items())


@contextlib.contextmanager
def _identity_layers(model: nn.Module) -> Iterator[None]:
    """Every decoder layer returns its input: a forward then costs only what lies outside the layers."""
    layers = adapter_for(model).layers()
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _identity
    try:
        yield
    finally:
        for layer, previous in zip(layers, saved, strict=True):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous


def _identity(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


def _eager_causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    blocked = torch.ones(n, n, dtype=torch.bool, device=like.device).triu(1)
    mask = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    return mask.masked_fill(blocked, torch.finfo(like.dtype).min)[None, None]


def _probe(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    # The probe's work (spts.policies.attention_probe_scores, then pooling) in plain torch, so that timing does
    # not depend on that function's signature.
    heads, kv_heads = query.shape[1], keys.shape[1]
    grouped = query.reshape(1, kv_heads, heads // kv_heads, query.shape[-1])
    probabilities = (grouped @ keys.transpose(-1, -2) * scaling).float().softmax(-1)
    scores = probabilities.mean(dim=(1, 2))
    return torch.nn.functional.max_pool1d(scores[:, None], 13, stride=1, padding=6)[:, 0]


def _move(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    index = rows[..., None].expand(-1, -1, x.shape[-1])
    return x.scatter(1, index, torch.gather(x, 1, index))


def load_or_measure(
    out_dir: Path,
    model: nn.Module,
    length: int,
    scorer: FFNScorer | None,
    ffn_policy: str,
    repeats: int = 5,
    sparse_block: int | None = None,
) -> tuple[SpeedModel, bool]:
    """The speed model cached in ``out_dir`` when it was measured for the same key, else a new measurement
    (then cached). Returns the model and whether it came from the cache."""
    path = Path(out_dir) / FILE
    key = speed_key(model, length, ffn_policy, sparse_block)
    if path.is_file():
        try:
            cached = SpeedModel.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            cached = None
        if cached is not None and cached.key == key:
            return cached, True
    measured = measure_speed_model(model, length, scorer, repeats, ffn_policy, sparse_block)
    path.write_text(json.dumps(measured.to_dict(), indent=2) + "\n")
    return measured, False


def measure_speedups(
    model: nn.Module,
    length: int,
    configs: Mapping[str, SPTSConfig],
    scorers: Mapping[str, Any],
    repeats: int = 3,
    seed: int = 0,
    ids: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Time prefills of ``length`` random tokens (or of ``ids``), the full model and each config interleaved after
    one warm-up round (as ``spts bench`` does); per config: full and config medians and their ratio."""
    from spts.runtime.engine import enabled

    device = next(model.parameters()).device
    if ids is None:
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)

    def prefill() -> Any:
        with torch.inference_mode():
            return model(ids, use_cache=True, logits_to_keep=1)

    def with_config(fingerprint: str) -> Any:
        def run() -> Any:
            with enabled(model, configs[fingerprint], scorers.get(fingerprint)):
                return prefill()

        return run

    calls = {"full": prefill, **{fp: with_config(fp) for fp in configs}}
    timings = time_calls(calls, device, repeats=repeats, warmup=1)
    full = timings["full"].median
    return {
        fp: {"full_s": full, "config_s": timings[fp].median, "measured_speedup": full / timings[fp].median}
        for fp in configs
    }


def measure_configs(
    model: nn.Module,
    lengths: tuple[int, ...],
    fingerprints: list[str],
    configs: Mapping[str, SPTSConfig],
    scorers: Any,
    store: Any,
    repeats: int = 3,
    seed: int = 0,
    texts: Mapping[int, torch.Tensor] | None = None,
) -> dict[str, dict[str, Any]]:
    """Timed prefills (full vs config) of the given configs at each length (of random tokens, or of ``texts[length]``
    where given: block-sparse attention's speed needs text), cached in the trial store
    (:class:`spts.tuning.search.TrialStore`, keyed by fingerprint and length). Per config: its measurements by
    length and ``measured_speedup``, the smallest over the lengths (what a speedup at every length promises)."""
    for length in lengths:
        todo = [fp for fp in fingerprints if (fp, length) not in store.timings]
        if not todo:
            continue
        measured = measure_speedups(
            model,
            length,
            {fp: configs[fp] for fp in todo},
            {fp: scorers(configs[fp]) for fp in todo},
            repeats,
            seed,
            (texts or {}).get(length),
        )
        for fp, values in measured.items():
            store.append({"kind": "timing", "fingerprint": fp, "length": length, **values, "repeats": repeats})
    out: dict[str, dict[str, Any]] = {}
    for fp in fingerprints:
        by_length = {str(length): store.timings[(fp, length)] for length in lengths}
        out[fp] = {
            **(by_length[str(lengths[0])] if len(lengths) == 1 else {}),
            "measured_speedup": min(t["measured_speedup"] for t in by_length.values()),
            "by_length": {
                k: {n: t[n] for n in ("full_s", "config_s", "measured_speedup")} for k, t in by_length.items()
            },
        }
    return out
