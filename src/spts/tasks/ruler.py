"""RULER-style synthetic tasks (Hsieh et al., 2024), generated offline from the Paul Graham essays.

The prompts follow RULER's templates and answer prefixes; needle keys are word pairs and values 7-digit
numbers, as in RULER's default ``niah`` configs. Generation budgets are smaller than RULER's (its 128
tokens for a 7-digit answer only cost time); graded by RULER's ``string_match_all``: the fraction of the
expected strings present in the reply.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Callable
from functools import lru_cache

from spts.data.corpora import haystack_sentences
from spts.tasks.base import Built, TaskSpec, insert_at_depths

_NIAH = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What are all the special magic {kind} for {query} mentioned in the provided text?"
)
_NIAH_PREFIX = " The special magic {kind} for {query} mentioned in the provided text are"
_NEEDLE = "One of the special magic numbers for {key} is: {value}."

_VT = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {value} in the text above."
)
_VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {n} variables are assigned "
    "the value {value}, they are: "
)
_VT_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_CWE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
    "above list?"
)
_CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

_FWE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
_FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


def _filler_chars(target_tokens: int) -> int:
    return 8 * target_tokens + 4096  # comfortably more than fits: essays run ~4-5 characters per token


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """Distinct plain lowercase words of the essays (sorted, so fixed for a pinned essay package)."""
    text = " ".join(haystack_sentences(600_000, seed=0))
    return tuple(sorted({w for w in re.findall(r"\b[a-z]{4,10}\b", text)}))


def _key(rng: random.Random) -> str:
    words = _vocabulary()
    return f"{rng.choice(words)}-{rng.choice(words)}"


def _value(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _niah(n_keys: int, n_values: int, n_queries: int) -> Callable[[random.Random, float, int], tuple]:
    """Needles ``key -> value``; ``n_keys`` distinct keys (the first ``n_queries`` asked for), ``n_values``
    values for each key. The first asked needle goes at the requested depth, the others anywhere."""

    def prepare(rng: random.Random, depth: float, target_tokens: int) -> tuple[Callable[[int], Built], int]:
        sentences = haystack_sentences(_filler_chars(target_tokens), seed=rng.randrange(1 << 30))
        keys = list(dict.fromkeys(_key(rng) for _ in range(4 * n_keys)))[:n_keys]
        needles = [(key, _value(rng)) for key in keys for _ in range(n_values)]
        depths = [depth] + [rng.random() for _ in needles[1:]]
        asked = keys[:n_queries]
        query = asked[0] if n_queries == 1 else ", ".join(asked[:-1]) + " and " + asked[-1]
        references = tuple(v for k, v in needles if k in asked)

        def make(k: int) -> Built:
            items = [(d, _NEEDLE.format(key=key, value=v)) for d, (key, v) in zip(depths, needles, strict=True)]
            context = " ".join(insert_at_depths(sentences[:k], items))
            user = _NIAH.format(kind="numbers", context=context, query=query)
            return user, _NIAH_PREFIX.format(kind="numbers", query=query), references, depth

        return make, len(sentences)

    return prepare


def _variable_name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=5))


def _vt(rng: random.Random, depth: float, target_tokens: int, hops: int = 4) -> tuple[Callable[[int], Built], int]:
    """One chain ``X1 = value, X2 = X1, ...``; its first link at the requested depth, the rest after it."""
    names = list(dict.fromkeys(_variable_name(rng) for _ in range(4 * (hops + 1))))[: hops + 1]
    value = str(rng.randint(10_000, 99_999))
    links = [f"VAR {names[0]} = {value}.", *(f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names))]
    depths = [depth, *sorted(depth + (1 - depth) * rng.random() for _ in links[1:])]
    units = _filler_chars(target_tokens) // len(_VT_NOISE)

    def make(k: int) -> Built:
        context = "\n".join(insert_at_depths([_VT_NOISE] * k, list(zip(depths, links, strict=True))))
        user = _VT.format(context=context, value=value)
        return user, _VT_PREFIX.format(n=len(names), value=value), tuple(names), depth

    return make, units


def _cwe(
    rng: random.Random, depth: float, target_tokens: int, n_common: int = 10
) -> tuple[Callable[[int], Built], int]:
    """A numbered list: ``n_common`` words 30 times each, ``k`` rare words 3 times each (RULER's counts;
    below 4K tokens 6 and 1, so that the common words leave room for anything else)."""
    common_freq, rare_freq = (30, 3) if target_tokens >= 4096 else (6, 1)
    words = rng.sample(_vocabulary(), min(len(_vocabulary()), n_common + target_tokens))
    common, rare = words[:n_common], words[n_common:]
    order_seed = rng.randrange(1 << 30)

    def make(k: int) -> Built:
        listed = common * common_freq + rare[:k] * rare_freq
        random.Random(order_seed).shuffle(listed)
        context = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(listed))
        return _CWE.format(context=context), _CWE_PREFIX, tuple(common), None

    return make, len(rare)


def _coded_word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def _fwe(
    rng: random.Random, depth: float, target_tokens: int, alpha: float = 2.0
) -> tuple[Callable[[int], Built], int]:
    """Coded words with Zipf counts ``floor(k / rank**alpha)``: the top three are strictly the most frequent
    once ``k >= 16``; a ``....`` separates every few words (noise to ignore, as in RULER)."""
    vocab = list(dict.fromkeys(_coded_word(rng) for _ in range(4000)))
    order_seed = rng.randrange(1 << 30)

    def make(k: int) -> Built:
        scale = 16 + k
        words = [w for rank, w in enumerate(vocab, 1) for _ in range(int(scale / rank**alpha))]
        random.Random(order_seed).shuffle(words)
        context = " ".join(w if (i + 1) % 6 else w + " ...." for i, w in enumerate(words))
        return _FWE.format(context=context), _FWE_PREFIX, tuple(vocab[:3]), None

    return make, 2 * target_tokens


RULER_TASKS = (
    TaskSpec("niah_single", "ruler", "contains", 32, "all", _niah(1, 1, 1), description="one needle, one key"),
    TaskSpec("niah_multikey", "ruler", "contains", 32, "all", _niah(4, 1, 1), description="4 needles, 1 asked"),
    TaskSpec("niah_multivalue", "ruler", "contains", 64, "all", _niah(1, 4, 1), description="4 values of 1 key"),
    TaskSpec("niah_multiquery", "ruler", "contains", 64, "all", _niah(4, 1, 4), description="4 keys asked"),
    TaskSpec("vt", "ruler", "contains", 32, "all", _vt, description="variable tracking, 1 chain, 4 hops"),
    TaskSpec("cwe", "ruler", "contains", 64, "all", _cwe, uses_depth=False, description="10 common words"),
    TaskSpec("fwe", "ruler", "contains", 32, "all", _fwe, uses_depth=False, description="3 most frequent words"),
)
