"""The tuning objective: how faithfully a config reproduces the full model's own answer; prefix replay
(:mod:`spts.runtime.replay`) makes scoring a config cost only its skipping layers.

Per prompt, the full model runs once: its greedy answer (up to ``ANSWER_TOKENS`` tokens, ending at a stop token,
which is kept as part of the answer) and, for every layer below the deepest start layer still to score, the
layer's output and the keys/values it cached. A config is then scored by

1. an SPTS prefill of the prompt in which layers ``< start_layer`` *replay* those recordings instead of computing
   (their outputs are exactly what the full model computes there, since SPTS leaves them alone), and
2. one forward of the full answer's tokens appended to the config's cache (teacher forcing; SPTS treats a call
   with a non-empty cache as decoding and computes those tokens in every layer).

Fidelity of a prompt (in [0, 1]): ``0.5 * [first token matches] + 0.5 * share of the later answer tokens whose
teacher-forced argmax matches`` (the first token alone when the answer has one token). The first token is the
config's own prediction and decides where generation goes; later positions are teacher-forced, so their
agreement measures whether the compressed cache still supports the rest of the answer.

For the task-score objectives (:mod:`spts.tuning.quality`) both the full model and the config also decode their own
greedy answer to the task's answer budget (``task_tokens``), as ``spts eval`` does: through the static decoder
(``fast=True``), which copies the prefill's cache into its own buffers, so the teacher-forced forward that follows
still extends the prefill's cache and nothing else.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spts.config import SPTSConfig
from spts.generation import decode_step, greedy_continue, stop_token_ids
from spts.runtime.engine import enabled
from spts.runtime.replay import RecordedPrefix, recording, replay_prefix
from spts.runtime.transformers_api import model_cache_argument, output_cache

ANSWER_TOKENS = 16


@dataclass
class Reference:
    """The full model on one prompt: its answer, and what layers ``[0, depth)`` computed."""

    prompt_id: str
    prefix: RecordedPrefix = field(repr=False)
    answer_ids: list[int]
    full_logprobs: list[float]
    answer_text: str = ""
    task_answer: str | None = None
    """The full model's own answer to the task's budget (``task_tokens``), when asked for."""

    @property
    def input_ids(self) -> torch.Tensor:
        return self.prefix.input_ids

    @property
    def depth(self) -> int:
        """Layers recorded: configs starting at most here can replay their prefix."""
        return self.prefix.depth

    def to_row(self) -> dict[str, Any]:
        return {
            "kind": "reference",
            "prompt_id": self.prompt_id,
            "prompt_tokens": int(self.input_ids.shape[-1]),
            "answer_ids": self.answer_ids,
            "answer": self.answer_text,
            "full_logprobs": self.full_logprobs,
        }


def reference_run(
    model: nn.Module,
    tokenizer: Any,
    prompt_id: str,
    input_ids: torch.Tensor,
    depth: int,
    answer_tokens: int = ANSWER_TOKENS,
    task_tokens: int = 0,
    stop_at_newline: bool = False,
) -> Reference:
    """Prefill ``input_ids`` with the unmodified model, recording layers ``[0, depth)``; then its greedy answer
    (and, with ``task_tokens``, its answer to the task's budget, as ``spts eval`` decodes it)."""
    prefix = RecordedPrefix.empty(input_ids, depth)
    # The cache's own tensors, not copies: decoding below appends by concatenation, leaving them untouched.
    with torch.inference_mode(), recording(model, prefix, copy=False):
        out = model(input_ids, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    stops = stop_token_ids(model, tokenizer)
    task_answer = None
    if task_tokens:  # first: the static decoder copies the cache, which the loop below then extends
        task_answer = greedy_continue(
            model, tokenizer, out.logits[:, -1], cache, task_tokens, stops, stop_at_newline, fast=True
        )
    step = decode_step(model, cache, answer_tokens, fast=False)
    logits = out.logits[:, -1]
    answer: list[int] = []
    logprobs: list[float] = []
    with torch.inference_mode():
        while True:
            token = int(logits.argmax(-1))
            answer.append(token)
            logprobs.append(float(logits.float().log_softmax(-1)[0, token]))
            if token in stops or len(answer) == answer_tokens:
                break
            logits = step(torch.tensor([[token]], device=input_ids.device))
    text = tokenizer.decode(answer, skip_special_tokens=True).strip() if tokenizer is not None else ""
    return Reference(prompt_id, prefix, answer, logprobs, text, task_answer)


@dataclass(frozen=True)
class Score:
    """How a config did on one prompt, against the full model's answer."""

    logprobs: tuple[float, ...]
    """Log-probability the config gives each full-answer token (first: from its prefill; then teacher-forced)."""
    matches: tuple[bool, ...]
    """Whether the config's argmax at each answer position is the full answer's token."""
    kv_tokens: int
    """Token-layers the config's prefill cached (for the KV share)."""
    task_answer: str | None = None
    """The config's own greedy answer to the task's budget, when asked for (``task_tokens``)."""

    @property
    def first_match(self) -> bool:
        return self.matches[0]

    @property
    def fidelity(self) -> float:
        return answer_fidelity(self.matches)

    def logprob_gap(self, full_logprobs: list[float]) -> float:
        """Mean over answer tokens of the full model's log-probability minus the config's (>= 0 roughly)."""
        return sum(f - c for f, c in zip(full_logprobs, self.logprobs, strict=True)) / len(self.logprobs)


def answer_fidelity(matches: tuple[bool, ...] | list[bool]) -> float:
    """Fidelity of one prompt (see the module docstring): the first token weighs half."""
    if len(matches) == 1:
        return float(matches[0])
    return 0.5 * float(matches[0]) + 0.5 * sum(matches[1:]) / (len(matches) - 1)


def score_config(
    model: nn.Module,
    reference: Reference,
    config: SPTSConfig,
    proxies: Any = None,
    replay: bool = True,
    *,
    tokenizer: Any = None,
    task_tokens: int = 0,
    stop_at_newline: bool = False,
) -> Score:
    """Prefill the reference's prompt with ``config`` (the layers below its start that compute what the full model
    does replayed unless ``replay`` is False: none from a sparse-attention layer on), then teacher-force the full
    answer over the config's cache in one forward."""
    ids = reference.input_ids
    answer = torch.tensor([reference.answer_ids], device=ids.device)
    prefix = replay_prefix(model, reference.prefix, config.exact_prefix()) if replay else contextlib.nullcontext()
    with torch.inference_mode(), enabled(model, config, proxies):
        with prefix:
            out = model(ids, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        kv_tokens = sum(cache.get_seq_length(i) for i in range(len(cache.layers)))
        task_answer = None
        if task_tokens:  # the config's own answer, from a copy of its cache (the static decoder's buffers)
            last = out.logits[:, -1]
            task_answer = greedy_continue(model, tokenizer, last, cache, task_tokens, None, stop_at_newline, fast=True)
        logits = [out.logits[0, -1:]]
        if answer.shape[1] > 1:
            forced = model(answer[:, :-1], use_cache=True, **{model_cache_argument(model): cache})
            logits.append(forced.logits[0])
    logprobs = torch.cat(logits).float().log_softmax(-1)
    targets = answer[0]
    chosen = logprobs.gather(1, targets[:, None])[:, 0]
    matches = logprobs.argmax(-1) == targets
    return Score(tuple(chosen.tolist()), tuple(bool(m) for m in matches.tolist()), int(kv_tokens), task_answer)
