"""Accuracy evaluation: what each skipping configuration costs, on long-context tasks, for your model.

    from spts.eval import build_samples, resolve_methods, run_eval, write_reports
    samples = build_samples(tokenizer, ["ruler", "qa"], lengths=[4096, 8192], n=50)
    methods = resolve_methods("full,pap,pap+ffn,spts@0.5,spts,spts@2", SPTSConfig.for_model(model))
    rows = run_eval(model, tokenizer, samples, methods, "runs/eval")
    write_reports(rows, "runs/eval")

Command line: ``spts eval --help``.
"""

from __future__ import annotations

from collections.abc import Sequence

from spts.eval.methods import Method, resolve_method, resolve_methods, scale_budgets
from spts.eval.metrics import METRICS, score
from spts.eval.prompts import EvalSample, PromptRenderer
from spts.eval.report import summarize, write_reports
from spts.eval.runner import ResumeError, run_eval, run_method
from spts.eval.tasks import GROUPS, TASKS, generate, longbench_samples, resolve_tasks


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
    "METRICS",
    "TASKS",
    "EvalSample",
    "Method",
    "PromptRenderer",
    "ResumeError",
    "build_samples",
    "generate",
    "longbench_samples",
    "resolve_method",
    "resolve_methods",
    "run_eval",
    "run_method",
    "scale_budgets",
    "score",
    "summarize",
    "write_reports",
]
