"""Search an SPTS schedule for one model on this machine: ``spts tune`` and :func:`tune`.

    from spts.tuning import tune
    result = tune(model, tokenizer, "runs/tune", target_speedup=1.5)   # or min_fidelity=0.95
    spts.enable(model, result.path)                                    # tuned.json

A grid of schedules (:mod:`spts.tuning.space`) is ranked for speed by a cost model calibrated on this machine
(:mod:`spts.tuning.speed`) and for quality on calibration prompts from several families and lengths
(:mod:`spts.tuning.quality`: fidelity to the full model's own answers, :mod:`spts.tuning.objective`, and the task
score of the config's own answers), by successive halving (:mod:`spts.tuning.search`); the chosen schedule is then
scored on a held-out family (:mod:`spts.tuning.holdout`); outputs in :mod:`spts.tuning.report`. Details:
docs/tune.md.

Names load on first use (PEP 562), so that importing ``spts`` does not also load the task generators, the search
and the reports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TuneError": "spts.tuning.api",
    "TuneResult": "spts.tuning.api",
    "TuneSettings": "spts.tuning.api",
    "tune": "spts.tuning.api",
    "ANSWER_TOKENS": "spts.tuning.objective",
    "answer_fidelity": "spts.tuning.objective",
    "DEFAULT_TASKS": "spts.tuning.prompts",
    "LEGACY_TASKS": "spts.tuning.prompts",
    "OBJECTIVES": "spts.tuning.quality",
    "TUNE_SEED_OFFSET": "spts.tuning.prompts",
    "FIDELITY_DEFINITION": "spts.tuning.report",
    "Target": "spts.tuning.search",
    "TuneResumeError": "spts.tuning.search",
    "SpeedModel": "spts.tuning.speed",
}

if TYPE_CHECKING:
    from spts.tuning.api import TuneError, TuneResult, TuneSettings, tune
    from spts.tuning.objective import ANSWER_TOKENS, answer_fidelity
    from spts.tuning.prompts import DEFAULT_TASKS, LEGACY_TASKS, TUNE_SEED_OFFSET
    from spts.tuning.quality import OBJECTIVES
    from spts.tuning.report import FIDELITY_DEFINITION
    from spts.tuning.search import Target, TuneResumeError
    from spts.tuning.speed import SpeedModel


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spts.tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ANSWER_TOKENS",
    "DEFAULT_TASKS",
    "FIDELITY_DEFINITION",
    "LEGACY_TASKS",
    "OBJECTIVES",
    "TUNE_SEED_OFFSET",
    "SpeedModel",
    "Target",
    "TuneError",
    "TuneResult",
    "TuneResumeError",
    "TuneSettings",
    "answer_fidelity",
    "tune",
]
