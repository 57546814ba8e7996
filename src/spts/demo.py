"""The demo: a real small model, a long needle-in-a-haystack prompt, SPTS off vs on, side by side."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from spts.config import SPTSConfig
from spts.data.haystack import NeedlePrompt, build_needle_prompt, prompt_input_ids
from spts.generation import greedy_continue, prefill_with_cache
from spts.runtime import cache_nbytes, cache_tokens_per_layer, enabled
from spts.runtime.timing import time_calls


@dataclass(frozen=True)
class DemoRun:
    """One side of the comparison."""

    method: str
    answer: str
    correct: bool
    ttft_seconds: float
    ttft_spread: float
    kv_cache_bytes: int
    kv_tokens: int


@dataclass(frozen=True)
class DemoResult:
    model: str
    prompt_tokens: int
    needle: str
    config: SPTSConfig
    device: str
    ltp: bool
    full: DemoRun
    spts: DemoRun

    @property
    def speedup(self) -> float:
        return self.full.ttft_seconds / self.spts.ttft_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "needle": self.needle,
            "device": self.device,
            "ltp": self.ltp,
            "config": self.config.to_dict(),
            "ttft_speedup": self.speedup,
            "full": self.full.__dict__,
            "spts": self.spts.__dict__,
        }


def check_prompt_fits(model, model_name: str, prompt_tokens: int) -> None:
    """Refuse a demo prompt longer than the model's context window, where even the full model's answer means little."""
    window = getattr(model.config, "max_position_embeddings", None)
    if isinstance(window, int) and prompt_tokens > window:
        raise ValueError(
            f"a {prompt_tokens}-token prompt exceeds {model_name}'s context window of {window} tokens; "
            f"choose at most {window} (--tokens)"
        )


def run_demo(
    model,
    tokenizer,
    model_name: str,
    prompt_tokens: int = 6000,
    config: SPTSConfig | None = None,
    proxies: Any = None,
    max_new_tokens: int = 24,
    repeats: int = 2,
    seed: int = 0,
) -> DemoResult:
    """Answer one needle prompt with the full model and with SPTS; time both prefills side by side.

    TTFT is the prefill forward that yields the first token (``logits_to_keep=1``), the fastest path
    for both sides; the two are interleaved after a short warm-up, and the median is kept. The answer
    is decoded greedily from the last timed prefill's cache, so SPTS answers from its compressed cache.
    """
    check_prompt_fits(model, model_name, prompt_tokens)
    config = config or SPTSConfig.for_model(model)
    device = next(model.parameters()).device
    prompt: NeedlePrompt = build_needle_prompt(tokenizer, prompt_tokens, depth=0.5, seed=seed)
    ids = prompt_input_ids(tokenizer, prompt).to(device)

    results: dict[str, tuple[torch.Tensor, Any]] = {}

    def full_prefill() -> None:
        results["full"] = prefill_with_cache(model, ids)

    def spts_prefill() -> None:
        with enabled(model, config, proxies):
            results["spts"] = prefill_with_cache(model, ids)

    warm_ids = ids[:, -256:]
    with torch.inference_mode():  # warm-up on a short prompt: kernels and allocator, not a full prefill
        model(warm_ids)
        with enabled(model, config, proxies):
            model(warm_ids)
    timings = time_calls({"full": full_prefill, "spts": spts_prefill}, device, repeats=repeats, warmup=0)
    runs = {}
    for method, (logits, cache) in results.items():
        kv_tokens = sum(cache_tokens_per_layer(cache))
        kv_bytes = cache_nbytes(cache)
        with enabled(model, config, proxies) if method == "spts" else contextlib.nullcontext():
            answer = greedy_continue(model, tokenizer, logits, cache, max_new_tokens)
        runs[method] = DemoRun(
            method=method,
            answer=answer,
            correct=prompt.is_correct(answer),
            ttft_seconds=timings[method].median,
            ttft_spread=timings[method].spread,
            kv_cache_bytes=kv_bytes,
            kv_tokens=kv_tokens,
        )
    return DemoResult(
        model=model_name,
        prompt_tokens=ids.shape[1],
        needle=prompt.answer,
        config=config,
        device=str(device),
        ltp=proxies is not None,
        full=runs["full"],
        spts=runs["spts"],
    )
