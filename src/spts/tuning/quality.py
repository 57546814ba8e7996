"""What the search ranks configs by: their *quality* over the prompts they have seen, under one of four
objectives, and the per-family and per-length numbers the reports show.

Per prompt ``p`` a trial gives the fidelity to the full model's answer (:mod:`spts.tuning.objective`) and, for the
``score`` and ``blend`` objectives, the task score of the config's own greedy answer and of the full model's
(graded by the task's metric, in [0, 1]). With ``loss_p = max(0, full_p - config_p)``:

* ``fidelity``: quality = mean over prompts of ``fidelity_p`` (the tuner's first objective, unchanged);
* ``score``: per family, the mean of ``1 - loss_p``; quality = the worst family's;
* ``blend``: per family, the mean of ``0.5 fidelity_p + 0.5 (1 - loss_p)``; quality = the worst family's;
* ``answered``: per family, over the prompts the full model *answers* (``full_p >= answered_min``, default 0.5),
  the mean of ``min(1, config_p / full_p)``; quality = the worst family's. Families without such a prompt yet are
  left out; with none at all (the first rungs may see only unanswered prompts) quality is the mean fidelity, which
  every config of a rung then falls back to alike (the full model decides which prompts count).

Why ``answered``: a prompt the full model gets wrong says nothing about whether a schedule keeps answers, yet under
``blend`` it weighs as much as any other, through the fidelity to a wrong answer. The 4K + 8K tune of
Qwen2.5-Coder-0.5B chose its schedule on the LongBench-format family, where the full model answered 2 of 6
calibration prompts; the fidelity (16 tokens) on the other 4 outweighed a task score lost on the answered one, and
the schedule kept a third of the single-document F1 on fresh development prompts where the runner-up kept all of it
(docs/tuning.md). Its calibration prompts are drawn answered (:func:`spts.tuning.prompts.answered_prompts`).

A family is a task group (``ruler``, ``qa``, ``longbench-format``). Taking the worst one means a schedule is only
as good as its worst prompt family: a loss on LongBench-format QA is not averaged away by needles it keeps. The loss
is one-sided: an answer better than the full model's earns nothing, so a schedule cannot buy a loss on one prompt
with luck on another. Score retention (sum of the config's scores over the full model's) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("fidelity", "score", "blend", "answered")

ANSWERED_MIN = 0.5
"""Default task score (in [0, 1]) from which the full model's answer counts as an answer under ``answered``."""

OBJECTIVE_DEFINITIONS = {
    "fidelity": "mean over prompts of the fidelity to the full model's greedy answer",
    "score": "per family, mean over its prompts of 1 - max(0, full model's task score - config's); the worst family",
    "blend": "per family, mean over its prompts of 0.5 x fidelity + 0.5 x (1 - max(0, full model's task score - "
    "config's)); the worst family",
    "answered": "per family, over the prompts the full model answers (task score >= {answered_min:g}), mean of "
    "min(1, config's task score / full model's); the worst family",
}


def needs_score(objective: str) -> bool:
    """Whether trials under ``objective`` decode and grade the config's own answer."""
    return objective != "fidelity"


def describe_objective(objective: str, answered_min: float = ANSWERED_MIN) -> str:
    return OBJECTIVE_DEFINITIONS[objective].format(answered_min=answered_min)


def prompt_quality(
    objective: str, trial: Mapping[str, Any], reference: Mapping[str, Any] | None, answered_min: float = ANSWERED_MIN
) -> float | None:
    """One prompt's contribution to quality (see the module docstring); None for a prompt ``answered`` leaves out."""
    if objective == "fidelity":
        return trial["fidelity"]
    full = reference["task_score"]  # type: ignore[index]
    if objective == "answered":
        return min(1.0, trial["task_score"] / full) if full >= answered_min else None
    loss = max(0.0, full - trial["task_score"])
    if objective == "score":
        return 1.0 - loss
    if objective == "blend":
        return 0.5 * trial["fidelity"] + 0.5 * (1.0 - loss)
    raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class Aggregate:
    """A config's scores over the prompts it has seen."""

    fingerprint: str
    prompts: int
    fidelity: float
    """Mean over prompts of the per-prompt fidelity (see :mod:`spts.tuning.objective`)."""
    first_token: float
    """Share of prompts whose first answer token the config predicts as the full model does."""
    token_agreement: float
    """Share of all answer tokens whose (teacher-forced) argmax matches."""
    logprob_gap: float
    """Mean over prompts of the per-token log-probability the config loses on the full answer."""
    quality: float | None = None
    """What the search ranks by (the objective's, see the module docstring); the fidelity when not given."""
    score: float | None = None
    """Mean task score of the config's own answers (None when not graded)."""
    full_score: float | None = None
    """Mean task score of the full model's answers on the same prompts."""
    retention: float | None = None
    """Sum of the config's task scores over the full model's (None when not graded or the full model scores 0)."""
    families: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per family (task group): prompts, fidelity, quality, score, full_score, retention."""
    lengths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The same per prompt length (the length each prompt was generated for)."""

    def __post_init__(self) -> None:
        if self.quality is None:
            object.__setattr__(self, "quality", self.fidelity)


def is_graded(trials: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any] | None]) -> bool:
    return all("task_score" in t for t in trials) and all(r is not None and "task_score" in r for r in references)


def group_stats(
    objective: str,
    trials: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any] | None],
    answered_min: float = ANSWERED_MIN,
) -> dict[str, Any]:
    """Prompts, mean fidelity and quality, and (when every prompt was graded) task scores and retention. Quality is
    left out where the objective counts none of the prompts (``answered``: the full model answers none; then
    ``answered`` is 0) or needs task scores that are missing."""
    n = len(trials)
    graded = is_graded(trials, references)
    stats: dict[str, Any] = {"prompts": n, "fidelity": sum(t["fidelity"] for t in trials) / n}
    if objective == "fidelity" or graded:
        values = [prompt_quality(objective, t, r, answered_min) for t, r in zip(trials, references, strict=True)]
        counted = [v for v in values if v is not None]
        if counted:
            stats["quality"] = sum(counted) / len(counted)
        if objective == "answered":
            stats["answered"] = len(counted)
    if graded:
        config = sum(t["task_score"] for t in trials)
        full = sum(r["task_score"] for r in references)  # type: ignore[index]
        stats.update(score=config / n, full_score=full / n, retention=config / full if full > 0 else None)
    return stats


def aggregate(
    fingerprint: str,
    rows: Sequence[Mapping[str, Any]],
    objective: str = "fidelity",
    references: Sequence[Mapping[str, Any] | None] | None = None,
    families: Sequence[str] | None = None,
    lengths: Sequence[int] | None = None,
    answered_min: float = ANSWERED_MIN,
) -> Aggregate:
    """A config's aggregate over its trial ``rows`` (one per prompt), with each prompt's full-model reference row,
    family and length (all optional for the fidelity objective)."""
    n = len(rows)
    references = list(references) if references is not None else [None] * n
    if needs_score(objective) and not is_graded(rows, references):
        raise ValueError(f"objective {objective!r} needs task scores, and {fingerprint}'s trials lack some")
    tokens = [m for r in rows for m in r["matches"]]
    by_family = grouped_stats(objective, rows, references, families, answered_min)
    by_length = grouped_stats(objective, rows, references, lengths, answered_min)
    overall = group_stats(objective, rows, references, answered_min)
    rated = [stats["quality"] for stats in by_family.values() if "quality" in stats] if objective != "fidelity" else []
    # Only `answered` can rate no prompt (the full model answers none seen yet): then the fidelity ranks.
    quality = min(rated) if rated else overall.get("quality", overall["fidelity"])
    return Aggregate(
        fingerprint=fingerprint,
        prompts=n,
        fidelity=overall["fidelity"],
        first_token=sum(r["first_match"] for r in rows) / n,
        token_agreement=sum(tokens) / len(tokens),
        logprob_gap=sum(r["logprob_gap"] for r in rows) / n,
        quality=quality,
        score=overall.get("score"),
        full_score=overall.get("full_score"),
        retention=overall.get("retention"),
        families=by_family,
        lengths=by_length,
    )


def grouped_stats(
    objective: str,
    rows: Sequence[Mapping[str, Any]],
    references: Sequence[Mapping[str, Any] | None],
    keys: Sequence[Any] | None,
    answered_min: float = ANSWERED_MIN,
) -> dict[str, dict[str, Any]]:
    """:func:`group_stats` per distinct key (``keys[i]`` is prompt ``i``'s family, length, task, ...), in order of
    first appearance; empty without keys."""
    if keys is None:
        return {}
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(str(key), []).append(i)
    return {
        key: group_stats(objective, [rows[i] for i in members], [references[i] for i in members], answered_min)
        for key, members in groups.items()
    }
