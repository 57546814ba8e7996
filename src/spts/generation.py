"""Prefill and greedy decoding over whatever cache the prefill left (the full one, or SPTS's compressed one).

A plain loop rather than ``model.generate``: the prefill is a separate call, so it can be timed on its own
(TTFT) with ``logits_to_keep=1``, the fastest prefill for every method alike. Decoding steps either through
the model (``fast=False``) or through :class:`spts.runtime.decode.StaticDecoder` (static per-layer buffers,
a CUDA graph on GPU), which gives the same greedy tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from spts.runtime.decode import StaticDecoder
from spts.runtime.padding import attach_layout, full_layout, generation_position_ids, layout_of
from spts.runtime.transformers_api import model_cache_argument, output_cache


def prefill_with_cache(
    model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, Any]:
    """The prefill forward that yields the first token: last-position logits and the (compressed) cache.

    ``attention_mask`` (B, T) marks a left-padded batch: positions are counted from each row's first real token,
    as ``model.generate`` counts them, and the cache carries its padding layout for :func:`decode_step`."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        with torch.inference_mode():
            out = model(ids, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], output_cache(out)
    positions = generation_position_ids(attention_mask)
    with torch.inference_mode():
        out = model(ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    if layout_of(cache) is None:  # the unmodified model's cache: every layer holds every position
        attach_layout(cache, full_layout(attention_mask, positions))
    return out.logits[:, -1], cache


def stop_token_ids(model, tokenizer) -> frozenset[int]:
    """Tokens that end a reply: the tokenizer's EOS and the generation config's (chat models often have
    several, e.g. Qwen's ``<|im_end|>`` and ``<|endoftext|>``)."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def greedy_continue(
    model,
    tokenizer,
    logits: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    stop_ids: frozenset[int] | None = None,
    stop_at_newline: bool = False,
    fast: bool = False,
) -> str:
    """Greedy decoding from a prefill's last logits and cache, up to ``max_new_tokens`` or a stop token;
    ``stop_at_newline`` also ends at the first line break after some text (for tasks graded on one line);
    ``fast`` decodes through a :class:`StaticDecoder` instead of the model's own step."""
    stop_ids = stop_token_ids(model, tokenizer) if stop_ids is None else stop_ids
    step = decode_step(model, cache, max_new_tokens, fast)
    tokens: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            if int(token) in stop_ids:
                break
            tokens.append(int(token))
            if stop_at_newline and "\n" in tokenizer.decode(tokens, skip_special_tokens=True).lstrip("\n"):
                break
            logits = step(token)
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def decode_step(model, cache: Any, max_new_tokens: int, fast: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from the next tokens (B, 1) to their logits (B, vocab) that appends them to ``cache``:
    the model's own forward, or (``fast``) a :class:`StaticDecoder` loaded with the cache."""
    if fast:
        return StaticDecoder(model, cache, max_new_tokens).step

    cache_kwargs = {model_cache_argument(model): cache}
    layout = layout_of(cache)
    if layout is None:

        def model_step(tokens: torch.Tensor) -> torch.Tensor:
            return model(tokens, use_cache=True, **cache_kwargs).logits[:, -1]

        return model_step
    # A padded batch: the model needs the padding mask (grown by each new token) and each row's own position.
    state = {"mask": layout.attention_mask.long(), "position": layout.next_positions[:, None]}

    def padded_step(tokens: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat((state["mask"], torch.ones_like(tokens)), dim=1)
        mask, position = state["mask"], state["position"]
        out = model(tokens, attention_mask=mask, position_ids=position, use_cache=True, **cache_kwargs)
        state["position"] = state["position"] + 1
        return out.logits[:, -1]

    return padded_step


def greedy_tokens(
    model, input_ids: torch.Tensor, max_new_tokens: int, fast: bool = True, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Exactly ``max_new_tokens`` greedy tokens (B, max_new_tokens) after ``input_ids`` (B, T), no early stop:
    prefill (SPTS's if enabled on ``model``), then decoding as :func:`decode_step` does. ``attention_mask``: a
    left-padded batch's (see :func:`prefill_with_cache`)."""
    logits, cache = prefill_with_cache(model, input_ids, attention_mask)
    step = decode_step(model, cache, max_new_tokens, fast)
    tokens = []
    with torch.inference_mode():
        for n in range(max_new_tokens):
            tokens.append(logits.argmax(-1, keepdim=True))
            if n + 1 < max_new_tokens:
                logits = step(tokens[-1])
    return torch.cat(tokens, dim=1)
