"""The held-out family: tasks left out of calibration, on which the chosen schedule's task score is reported.

The calibration prompts rate a schedule on the families it was chosen on; its winner's margin is partly those
prompts' luck, and the families it was not tuned on are where that shows (a schedule that kept 97-99% on needles
and our own QA kept 77% on LongBench-format single-document QA). So after choosing, the chosen schedule and the
full model answer ``--holdout-prompts`` development prompts (seed ``TUNE_SEED_OFFSET + --seed``, the calibration's
split, never ``spts eval``'s) of tasks no calibration prompt came from, graded by each task's metric; ``table.md``
and ``summary.json`` give the retention per task and per family.

Default: the first of ``qa``, ``lbf`` (LongBench-format), ``ruler`` that no calibration task belongs to; with the
default calibration tasks that is ``qa``, so calibration holds RULER-style needles and the LongBench-format family
and the report says how the choice carries to QA in another prompt format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spts.tasks import GROUPS, TASKS
from spts.tuning.prompts import DEFAULT_TASKS, CalibrationPrompt, families_of, task_names
from spts.tuning.quality import group_stats, grouped_stats

HOLDOUT_ORDER = ("qa", "lbf", "ruler")
"""Groups tried in turn for the default held-out family."""
NO_HOLDOUT = ("none",)


def resolve(
    tasks: Sequence[str] | None, holdout: Sequence[str] | None, prompt_file: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration tasks, held-out tasks) from the settings: ``tasks`` None means the defaults less the held-out
    ones; ``holdout`` None means the default held-out family (module docstring), ``("none",)`` or ``()`` none.
    ValueError for unknown names, a task in both, or nothing left to calibrate on."""
    given = task_names(tasks) if tasks else None
    if holdout is None:
        used = set(families_of(given)) if given and not prompt_file else set()
        held: tuple[str, ...] = ()
        for group in HOLDOUT_ORDER:
            if TASKS[GROUPS[group][0]].group not in used:
                held = GROUPS[group]
                break
    elif tuple(holdout) in ((), NO_HOLDOUT):
        held = ()
    else:
        held = task_names(holdout)
    calibration = given if given is not None else tuple(t for t in DEFAULT_TASKS if t not in held)
    if prompt_file:
        return (), held
    both = [t for t in calibration if t in held]
    if both:
        raise ValueError(
            f"tasks {', '.join(both)} are both calibrated on and held out; a held-out task must be left out of "
            "calibration (change --tasks or --holdout)"
        )
    if not calibration:
        raise ValueError("every default calibration task is held out: give --tasks to calibrate on")
    return calibration, held


def summarize(
    prompts: Sequence[CalibrationPrompt], trials: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The chosen config against the full model on the held-out prompts: overall, per family, per task and per
    length (task scores, retention, fidelity), and each prompt's answers."""

    def by(key: str) -> dict[str, Any]:
        return grouped_stats("score", trials, references, [getattr(prompt, key) for prompt in prompts])

    return {
        "tasks": list(dict.fromkeys(p.source for p in prompts)),
        "overall": group_stats("score", list(trials), list(references)),
        "families": by("family"),
        "by_task": by("source"),
        "lengths": by("target_length"),
        "prompts": [
            {"prompt_id": p.prompt_id, "tokens": p.length, "full_answer": r.get("task_answer"),
             "full_score": r.get("task_score"), "answer": t.get("task_answer"), "score": t.get("task_score"),
             "references": list(p.sample.references) if p.sample else []}
            for p, t, r in zip(prompts, trials, references, strict=True)
        ],
    }  # fmt: skip
