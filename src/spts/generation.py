"""Prefill and greedy decoding over whatever cache the prefill left (the full one, or SPTS's compressed one).

A plain loop rather than ``model.generate``: the prefill is a separate call, so it can be timed on its own
(TTFT) with ``logits_to_keep=1``, the fastest prefill for every method alike.
"""

from __future__ import annotations

from typing import Any

import torch


def prefill_with_cache(model, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The prefill forward that yields the first token: last-position logits and the (compressed) cache."""
    with torch.inference_mode():
        out = model(ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


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
) -> str:
    """Greedy decoding from a prefill's last logits and cache, up to ``max_new_tokens`` or a stop token;
    ``stop_at_newline`` also ends at the first line break after some text (for tasks graded on one line)."""
    stop_ids = stop_token_ids(model, tokenizer) if stop_ids is None else stop_ids
    tokens: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            if int(token) in stop_ids:
                break
            tokens.append(int(token))
            if stop_at_newline and "\n" in tokenizer.decode(tokens, skip_special_tokens=True).lstrip("\n"):
                break
            logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()
