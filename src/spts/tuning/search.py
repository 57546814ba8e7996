"""Successive halving over configs, ranked by the tuning target, with every result kept in a resumable JSONL.

All configs are scored on the first prompt; the better half (by the target's ranking) on the first two; the
better half of those on the first four; and so on until the survivors have seen every prompt. Prompts are used
in a fixed order, so a survivor of one rung only needs the prompts the rung adds, and each prompt's full-model
reference is needed in one rung only. Ties are broken by fingerprint: the search is a pure function of the
configs, the prompts' scores and the speed model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spts.jsonl import read_rows
from spts.tuning.quality import ANSWERED_MIN, Aggregate, aggregate

TRIALS_FILE = "trials.jsonl"


class TuneResumeError(ValueError):
    """An output folder holds tuning results that this run must not be mixed with."""


@dataclass(frozen=True)
class Target:
    """``speedup``: the config of best quality predicted at least this much faster (at every length);
    ``fidelity``: the fastest config keeping at least this quality (the fidelity under the fidelity objective)."""

    kind: str
    value: float
    objective: str = "fidelity"

    def describe(self) -> str:
        best = "most faithful config" if self.objective == "fidelity" else f"config of best {self.objective} quality"
        measure = "fidelity" if self.objective == "fidelity" else f"{self.objective} quality"
        if self.kind == "speedup":
            return f"{best} with predicted TTFT speedup >= {self.value:g}x"
        return f"fastest config (predicted TTFT speedup) with {measure} >= {self.value:g}"


def ranking(
    target: Target, speedups: Mapping[str, float], overall: Mapping[str, float] | None = None
) -> Callable[[Aggregate], tuple]:
    """Sort key, best first. Speedup target (every candidate already meets it): quality, then fidelity, then the
    smaller log-probability gap, then speed. Fidelity (quality) target: configs that keep it, fastest first; then the
    others, best first. Under the fidelity objective quality is the fidelity, so the fidelity term is a no-op there:
    the same order as the fidelity-only tuner's. ``speedups``: each config's guaranteed speedup (the smallest over
    the lengths); ``overall`` (e.g. the mean over the lengths) breaks ties between equal ``speedups``."""
    overall = overall or speedups

    def speed(a: Aggregate) -> tuple[float, float]:
        return (-speedups[a.fingerprint], -overall[a.fingerprint])

    if target.kind == "speedup":
        return lambda a: (-a.quality, -a.fidelity, a.logprob_gap, *speed(a), a.fingerprint)

    def key(a: Aggregate) -> tuple:
        if a.quality >= target.value:
            return (0, *speed(a), -a.quality, -a.fidelity, a.logprob_gap, a.fingerprint)
        return (1, -a.quality, -a.fidelity, a.logprob_gap, *speed(a), a.fingerprint)

    return key


def rung_sizes(n_prompts: int) -> list[int]:
    """Prompts seen by the survivors of each rung: ..., n/4, n/2, n (rounded up), starting from one."""
    sizes = [n_prompts]
    while sizes[0] > 1:
        sizes.insert(0, (sizes[0] + 1) // 2)
    return sizes


@dataclass(frozen=True)
class Rung:
    prompts: int
    fingerprints: tuple[str, ...]
    """Configs scored on the first ``prompts`` prompts in this rung, best first."""


def successive_halving(
    fingerprints: Sequence[str],
    n_prompts: int,
    evaluate: Callable[[Sequence[str], int], Mapping[str, Aggregate]],
    key: Callable[[Aggregate], tuple],
    min_survivors: int = 4,
    most_faithful_survives: bool = False,
) -> list[Rung]:
    """Run the rungs: ``evaluate(fingerprints, k)`` scores configs on the first ``k`` prompts and returns their
    aggregates. Half the configs survive each rung, but never fewer than ``min_survivors`` (when there are that
    many); with ``most_faithful_survives`` the config of best quality is kept even when the ranking would drop it,
    so a quality target that the fastest configs fail on more prompts still has a fallback."""
    alive = list(fingerprints)
    rungs = []
    sizes = rung_sizes(n_prompts)
    for position, size in enumerate(sizes):
        ordered = sorted(evaluate(alive, size).values(), key=key)
        rungs.append(Rung(size, tuple(a.fingerprint for a in ordered)))
        if position == len(sizes) - 1:
            break
        keep = max(math.ceil(len(ordered) / 2), min(min_survivors, len(ordered)))
        survivors = [a.fingerprint for a in ordered[:keep]]
        if most_faithful_survives:
            best = min(ordered, key=lambda a: (-a.quality, -a.fidelity, a.logprob_gap, a.fingerprint)).fingerprint
            if best not in survivors:
                survivors[-1] = best
        alive = survivors
    return rungs


# ---------------------------------------------------------------------------------------------- the JSONL


class TrialStore:
    """``trials.jsonl``: full-model references per prompt, trials per (config fingerprint, prompt) and timed
    prefills per (config fingerprint, length), appended as they finish; read back on restart."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / TRIALS_FILE
        rows = read_rows(self.path)
        self.references = {r["prompt_id"]: r for r in rows if r.get("kind") == "reference"}
        self.trials = {(r["fingerprint"], r["prompt_id"]): r for r in rows if r.get("kind") == "trial"}
        self.timings = {(r["fingerprint"], r["length"]): r for r in rows if r.get("kind") == "timing"}

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        kind = row["kind"]
        if kind == "reference":
            self.references[row["prompt_id"]] = row
        elif kind == "trial":
            self.trials[(row["fingerprint"], row["prompt_id"])] = row
        elif kind == "timing":
            self.timings[(row["fingerprint"], row["length"])] = row

    def complete(self, fingerprint: str, prompt_id: str, graded: bool) -> bool:
        """Whether the trial is stored with what the run needs (a task score when ``graded``)."""
        row = self.trials.get((fingerprint, prompt_id))
        return row is not None and (not graded or "task_score" in row)

    def aggregate(
        self, fingerprint: str, prompts: Iterable[Any], objective: str = "fidelity", answered_min: float = ANSWERED_MIN
    ) -> Aggregate:
        """The config's aggregate over ``prompts`` (:class:`spts.tuning.prompts.CalibrationPrompt`, or their ids
        for the fidelity objective without per-family numbers)."""
        prompts = list(prompts)
        ids = [p if isinstance(p, str) else p.prompt_id for p in prompts]
        described = all(not isinstance(p, str) for p in prompts)
        return aggregate(
            fingerprint,
            [self.trials[(fingerprint, p)] for p in ids],
            objective,
            [self.references.get(p) for p in ids],
            [p.family for p in prompts] if described else None,
            [p.target_length for p in prompts] if described else None,
            answered_min,
        )


RUN_KEYS = ("model", "ffn_policy", "dtype", "answer_tokens", "objective")
RUN_DEFAULTS = {"objective": "fidelity"}
"""What a folder written before a key existed was computed with."""


def check_run(out_dir: Path, run_info: dict[str, Any]) -> None:
    """Refuse to mix results of another model, FFN policy, dtype, answer length or objective into ``out_dir``;
    record the run in ``run.json``."""
    path = Path(out_dir) / "run.json"
    if path.exists():
        previous = {**RUN_DEFAULTS, **json.loads(path.read_text())}
        for key in RUN_KEYS:
            if key in previous and previous[key] != run_info.get(key):
                raise TuneResumeError(
                    f"{out_dir} holds tuning results with {key} {previous[key]!r}, not {run_info.get(key)!r}; "
                    "use another output folder" + (f" or --objective {previous[key]}" if key == "objective" else "")
                )
    path.write_text(json.dumps(run_info, indent=2) + "\n")
