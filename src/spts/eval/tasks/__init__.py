"""Evaluation tasks: RULER-style synthetic tasks and LongBench-style QA generated offline at any length,
and the real LongBench read from disk."""

from spts.eval.tasks.base import TaskSpec, generate, insert_at_depths, sample_depth
from spts.eval.tasks.longbench import longbench_samples
from spts.eval.tasks.qa import QA_TASKS
from spts.eval.tasks.ruler import RULER_TASKS

#: Every generated task by name.
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*RULER_TASKS, *QA_TASKS)}
#: Names accepted for a set of tasks.
GROUPS: dict[str, tuple[str, ...]] = {
    "ruler": tuple(s.name for s in RULER_TASKS),
    "qa": tuple(s.name for s in QA_TASKS),
    "all": tuple(TASKS),
}


def resolve_tasks(names: str | list[str]) -> list[TaskSpec]:
    """Task specs for comma-separated names or groups (``ruler``, ``qa``, ``all``), in order, without repeats."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen: dict[str, TaskSpec] = {}
    for name in names:
        for task in GROUPS.get(name, (name,)):
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")
            chosen[task] = TASKS[task]
    if not chosen:
        raise ValueError("no tasks given")
    return list(chosen.values())


__all__ = [
    "GROUPS",
    "TASKS",
    "TaskSpec",
    "generate",
    "insert_at_depths",
    "longbench_samples",
    "resolve_tasks",
    "sample_depth",
]
