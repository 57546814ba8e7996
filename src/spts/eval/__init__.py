"""Accuracy evaluation: what each skipping configuration costs, on long-context tasks, for your model.

    from spts.eval import build_samples, resolve_methods, run_eval, write_reports
    samples = build_samples(PromptRenderer(tokenizer), ["ruler", "qa"], lengths=[4096, 8192], n=50)
    methods = resolve_methods("full,pap,pap+ffn,spts@0.5,spts,spts@2", SPTSConfig.for_model(model))
    rows = run_eval(model, tokenizer, samples, methods, "runs/eval")
    write_reports(rows, "runs/eval")

Command line: ``spts eval --help``.
"""

from __future__ import annotations

from spts.eval.report import summarize, write_reports
from spts.eval.runner import ResumeError, run_eval, run_method
from spts.methods import Method, resolve_method, resolve_methods, scale_budgets
from spts.tasks import (
    GROUPS,
    TASKS,
    EvalSample,
    PromptRenderer,
    build_samples,
    generate,
    longbench_samples,
    resolve_tasks,
)
from spts.tasks.metrics import METRICS, score

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
    "resolve_tasks",
    "run_eval",
    "run_method",
    "scale_budgets",
    "score",
    "summarize",
    "write_reports",
]
