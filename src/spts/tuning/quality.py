"""What the search ranks configs by: their *quality* over the prompts they have seen, under one of three
objectives, and the per-family and per-length numbers the reports show.

Per prompt ``p`` a trial gives the fidelity to the full model's answer (:mod:`spts.tuning.objective`) and, for the
``score`` and ``blend`` objectives, the task score of the config's own greedy answer and of the full model's
(graded by the task's metric, in [0, 1]). With ``loss_p = max(0, full_p - config_p)``:

* ``fidelity``: quality = mean over prompts of ``fidelity_p`` (the tuner's first objective, unchanged);
* ``score``: per family, the mean of ``1 - loss_p``; quality = the worst family's;
* ``blend``: per family, the mean of ``0.5 fidelity_p + 0.5 (1 - loss_p)``; quality = the worst family's.

A family is a task group (``ruler``, ``qa``, ``longbench-format``). Taking the worst one means a schedule is only
as good as its worst prompt family: a loss on LongBench-format QA is not averaged away by needles it keeps. The loss
is one-sided: an answer better than the full model's earns nothing, so a schedule cannot buy a loss on one prompt
with luck on another. Score retention (sum of the config's scores over the full model's) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("fidelity", "score", "blend")

OBJECTIVE_DEFINITIONS = {
    "fidelity": "mean over prompts of the fidelity to the full model's greedy answer",
    "score": "per family, mean over its prompts of 1 - max(0, full model's task score - config's); the worst family",
    "blend": "per family, mean over its prompts of 0.5 x fidelity + 0.5 x (1 - max(0, full model's task score - "
    "config's)); the worst family",
}


def needs_score(objective: str) -> bool:
    """Whether trials under ``objective`` decode and grade the config's own answer."""
    return objective != "fidelity"


def prompt_quality(objective: str, trial: Mapping[str, Any], reference: Mapping[str, Any] | None) -> float:
    """One prompt's contribution to quality (see the module docstring)."""
    if objective == "fidelity":
        return trial["fidelity"]
    loss = max(0.0, reference["task_score"] - trial["task_score"])  # type: ignore[index]
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


def group_stats(
    objective: str, trials: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any] | None]
) -> dict[str, Any]:
    """Prompts, mean fidelity and quality, and (when every prompt was graded) task scores and retention."""
    n = len(trials)
    graded = all("task_score" in t for t in trials) and all(r is not None and "task_score" in r for r in references)
    stats: dict[str, Any] = {"prompts": n, "fidelity": sum(t["fidelity"] for t in trials) / n}
    if objective == "fidelity" or graded:
        stats["quality"] = sum(prompt_quality(objective, t, r) for t, r in zip(trials, references, strict=True)) / n
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
) -> Aggregate:
    """A config's aggregate over its trial ``rows`` (one per prompt), with each prompt's full-model reference row,
    family and length (all optional for the fidelity objective)."""
    n = len(rows)
    references = list(references) if references is not None else [None] * n
    tokens = [m for r in rows for m in r["matches"]]
    by_family = grouped_stats(objective, rows, references, families)
    by_length = grouped_stats(objective, rows, references, lengths)
    overall = group_stats(objective, rows, references)
    if "quality" not in overall:  # group_stats leaves it out only for a graded objective without task scores
        raise ValueError(f"objective {objective!r} needs task scores, and {fingerprint}'s trials lack some")
    worst_family = objective != "fidelity" and by_family
    quality = min(stats["quality"] for stats in by_family.values()) if worst_family else overall["quality"]
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
) -> dict[str, dict[str, Any]]:
    """:func:`group_stats` per distinct key (``keys[i]`` is prompt ``i``'s family, length, task, ...), in order of
    first appearance; empty without keys."""
    if keys is None:
        return {}
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(str(key), []).append(i)
    return {
        key: group_stats(objective, [rows[i] for i in members], [references[i] for i in members])
        for key, members in groups.items()
    }
