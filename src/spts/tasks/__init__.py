"""Prompt families: RULER-style synthetic tasks and LongBench-style QA generated offline at any length, and the
real LongBench read from disk; how a sample becomes model input (:mod:`spts.tasks.prompts`) and how its answer is
graded (:mod:`spts.tasks.metrics`). The evaluation and the tuner both draw their prompts from here."""

from collections.abc import Sequence

from spts.tasks.base import TaskSpec, generate, insert_at_depths, sample_depth
from spts.tasks.longbench import longbench_samples, write_longbench_files
from spts.tasks.longbench_format import LONGBENCH_FORMAT_TASKS
from spts.tasks.prompts import EvalSample, PromptRenderer
from spts.tasks.qa import QA_TASKS
from spts.tasks.ruler import RULER_TASKS

#: Every generated task by name.
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*RULER_TASKS, *QA_TASKS, *LONGBENCH_FORMAT_TASKS)}
#: Names accepted for a set of tasks. ``all`` is the first family (RULER-style and QA, as it always was); ``lbf``
#: the LongBench-format family (:mod:`spts.tasks.longbench_format`).
GROUPS: dict[str, tuple[str, ...]] = {
    "ruler": tuple(s.name for s in RULER_TASKS),
    "qa": tuple(s.name for s in QA_TASKS),
    "all": tuple(s.name for s in (*RULER_TASKS, *QA_TASKS)),
    "lbf": tuple(s.name for s in LONGBENCH_FORMAT_TASKS),
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


def build_samples(
    renderer: PromptRenderer,
    tasks: str | list[str],
    lengths: Sequence[int],
    n: int,
    seed: int = 0,
    depth: float | None = None,
) -> list[EvalSample]:
    """``n`` samples of each task at each length, rendered as ``renderer`` will feed them. Sample ``i`` depends
    only on (task, length, seed, i), so a larger ``n`` extends a run; samples come index by index across
    tasks, so a run stopped early still has about as many samples of every task."""
    if n < 1:
        raise ValueError(f"need at least one sample per task and length, got n={n}")
    if not lengths:
        raise ValueError("no context lengths given")
    specs = resolve_tasks(tasks)
    return [generate(spec, renderer, length, i, seed, depth) for length in lengths for i in range(n) for spec in specs]


__all__ = [
    "GROUPS",
    "TASKS",
    "EvalSample",
    "PromptRenderer",
    "TaskSpec",
    "build_samples",
    "generate",
    "insert_at_depths",
    "longbench_samples",
    "resolve_tasks",
    "sample_depth",
    "write_longbench_files",
]
