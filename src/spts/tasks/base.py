"""What a generated task is, and the two things every generator needs: fitting a prompt to a token
length, and placing items at a relative depth of a context."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from spts.tasks.prompts import EvalSample, PromptRenderer


class Built(NamedTuple):
    """A generator's output for ``k`` filler units."""

    user: str
    answer_prefix: str
    references: tuple[str, ...]
    depth: float | None
    """Relative depth of the information the answer needs (None when it is spread over the context)."""
    record: dict[str, Any] | None = None
    """The sample as a LongBench record (``context``, ``input``, ``answers``), for the LongBench-format family."""


@dataclass(frozen=True)
class TaskSpec:
    """A task generated offline at any length.

    ``prepare(rng, depth, target_tokens)`` draws everything random about one sample (keys, values, which
    question) and returns ``(make, units)``: ``make(k)`` builds the sample with ``k`` filler units, and
    ``units`` is how many are available. The largest ``k`` whose prompt fits the target length is used.
    """

    name: str
    group: str
    metric: str
    max_new_tokens: int
    aggregate: str
    prepare: Callable[[random.Random, float, int], tuple[Callable[[int], Built], int]]
    uses_depth: bool = True
    description: str = ""
    use_chat_template: bool = True
    """False for formats that are better off without one (LongBench's few-shot and code tasks)."""
    first_line_only: bool = False
    length_spread: float = 0.0
    """Prompts are fitted to a length drawn uniformly from ``[(1 - length_spread) * target, target]`` tokens
    (each sample its own), as real data sets vary in length; 0 fits every prompt to the target."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.length_spread < 1.0:
            raise ValueError(f"task {self.name}: length_spread must be in [0, 1), got {self.length_spread}")


def sample_depth(index: int) -> float:
    """Depth of sample ``index`` when none is requested: a low-discrepancy sequence over [0, 1], so any
    number of samples covers the context evenly and sample ``i`` never depends on how many are drawn."""
    return (index * 0.6180339887498949) % 1.0


def insert_at_depths(units: Sequence[str], items: Sequence[tuple[float, str]]) -> list[str]:
    """``units`` with each ``(depth, item)`` inserted at that relative position (0 = before the first
    unit, 1 = after the last); items at the same position keep their order."""
    out = list(units)
    placed = sorted((round(d * len(units)), order) for order, (d, _) in enumerate(items))
    for offset, (position, order) in enumerate(placed):
        out.insert(position + offset, items[order][1])
    return out


def fit(
    renderer: PromptRenderer,
    target_tokens: int,
    make: Callable[[int], Built],
    units: int,
    use_chat_template: bool = True,
) -> Built:
    """The build with the most filler units whose rendered prompt is at most ``target_tokens`` tokens."""

    def tokens(k: int) -> int:
        built = make(k)
        return renderer.count(built[0], built[1], use_chat_template)

    if tokens(0) > target_tokens:
        raise ValueError(
            f"target length {target_tokens} is too small: the prompt without any filler takes {tokens(0)} tokens"
        )
    if tokens(units) <= target_tokens:
        raise ValueError(f"not enough filler to reach {target_tokens} tokens ({units} units take {tokens(units)})")
    lo, hi = 0, units  # tokens(lo) fits, tokens(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tokens(mid) <= target_tokens:
            lo = mid
        else:
            hi = mid
    return make(lo)


def generate(
    spec: TaskSpec, renderer: PromptRenderer, target_tokens: int, index: int, seed: int = 0, depth: float | None = None
) -> EvalSample:
    """Sample ``index`` of ``spec`` at ``target_tokens`` tokens: a pure function of its arguments."""
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    used_depth = sample_depth(index) if depth is None else depth
    rng = random.Random(f"spts-eval/{spec.name}/{target_tokens}/{seed}/{index}")
    make, units = spec.prepare(rng, used_depth, target_tokens)
    # Drawn after everything the generator drew, so tasks without a spread keep the prompts they always had.
    fitted = target_tokens - int(spec.length_spread * target_tokens * rng.random()) if spec.length_spread else None
    built = Built(*fit(renderer, fitted or target_tokens, make, units, spec.use_chat_template))
    meta: dict[str, Any] = {"seed": seed}
    if built.record is not None:
        meta["record"] = built.record
    return EvalSample(
        task=spec.name,
        index=index,
        target_tokens=target_tokens,
        user=built.user,
        answer_prefix=built.answer_prefix,
        references=built.references,
        metric=spec.metric,
        aggregate=spec.aggregate,
        max_new_tokens=spec.max_new_tokens,
        depth=built.depth,
        use_chat_template=spec.use_chat_template,
        first_line_only=spec.first_line_only,
        meta=meta,
    )
