"""Calibration prompts for ``spts tune``: generated offline like ``spts eval``'s, but never the same ones, or a
user's JSONL file.

``spts eval`` draws sample ``i`` of a task from ``random.Random("spts-eval/{task}/{length}/{seed}/{i}")`` with
``--seed`` (default 0). Tuning draws from the same generators with seed ``TUNE_SEED_OFFSET + --seed``, so its
prompts (needles, keys, values, questions, filler) differ from every ``spts eval`` run with ``--seed`` below
``TUNE_SEED_OFFSET``: a schedule is never tuned on the prompts it is evaluated on. These seeds are the
*development split*: the calibration prompts and the held-out family's prompts (:mod:`spts.tuning.holdout`) both
come from it, from disjoint tasks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spts.tasks import TASKS, TaskSpec, generate, resolve_tasks
from spts.tasks.metrics import score
from spts.tasks.prompts import EvalSample, PromptRenderer

TUNE_SEED_OFFSET = 1_000_000
"""Generator seed of tuning prompts = this + ``--seed``; ``spts eval`` uses ``--seed`` itself (default 0)."""

DEFAULT_TASKS = (
    "niah_single", "lbf_multifieldqa_en", "qa_squad", "niah_multikey", "lbf_hotpotqa", "qa_hotpotqa", "vt",
)  # fmt: skip
"""Three families in turn, so that the first prompts of the search already hold each: RULER-style needles and
variable tracking, QA in our format (SQuAD, HotpotQA) and the LongBench-format family (LongBench's own prompts,
answer budgets and F1). The held-out family (by default ``qa``, :mod:`spts.tuning.holdout`) is left out."""

LEGACY_TASKS = ("niah_single", "niah_multikey", "vt", "qa_squad", "niah_multivalue", "qa_hotpotqa")
"""The calibration tasks of the fidelity-only tuner (before the development-split objectives): ``--tasks`` with
these, ``--objective fidelity`` and ``--holdout none`` resume its folders and reproduce its choices."""

MAX_MISSES = 8
"""Unanswered draws in a row after which :func:`answered_prompts` gives a task and length up: a task the full model
answers 30% of the time is given up wrongly 6% of the time, one it never answers costs 8 full answers."""

FILE_FAMILY = "file"
"""Family of ``--prompt-file`` prompts (no references: fidelity only)."""


@dataclass(frozen=True)
class CalibrationPrompt:
    prompt_id: str
    """Stable key of the prompt in ``trials.jsonl``: task/length/index/seed, or the file line and a text hash."""
    input_ids: torch.Tensor = field(compare=False, repr=False)
    """(1, n) token ids, chat template applied as ``spts eval`` does."""
    source: str = ""
    """The task (or the prompt file's name)."""
    family: str = FILE_FAMILY
    """The task's group (``ruler``, ``qa``, ``longbench-format``), or ``file``."""
    target_length: int = 0
    """The length the prompt was generated for (``--lengths``); a file prompt: its ``--length``."""
    sample: EvalSample | None = field(default=None, compare=False, repr=False)
    """The generated sample (references, metric, answer budget); None for a file prompt."""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[-1])

    @property
    def gradable(self) -> bool:
        return self.sample is not None


def grade(sample: EvalSample, prediction: str) -> float:
    """The task score of an answer in [0, 1], as ``spts eval`` grades it (first line only where the task says)."""
    graded = prediction.lstrip("\n").split("\n")[0] if sample.first_line_only else prediction
    return score(sample.metric, graded, sample.references, sample.all_classes, sample.aggregate)


def prompt_plan(n: int, n_tasks: int, lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(task position, length, sample index) of each of ``n`` prompts. Every ``n_tasks * len(lengths)`` prompts
    hold each task at each length once; consecutive prompts change task and (with several lengths) length, so the
    first rungs of the search see several of both. Prompt ``i`` does not depend on ``n``; with one length, prompt
    ``i`` is sample ``i // n_tasks`` of task ``i % n_tasks`` (as before lengths were a list)."""
    cycle = n_tasks * len(lengths)
    slots = itertools.islice(_slots(n_tasks, lengths), n)
    return [(task, length, i // cycle) for i, (task, length) in enumerate(slots)]


def _slots(n_tasks: int, lengths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(task position, length) of each prompt of :func:`prompt_plan`, without end."""
    for j in itertools.cycle(range(n_tasks * len(lengths))):
        task = j % n_tasks
        yield task, lengths[(task + j // n_tasks) % len(lengths)]


def generated_prompts(
    renderer: PromptRenderer,
    n: int,
    lengths: int | Sequence[int],
    seed: int = 0,
    tasks: Sequence[str] | str | None = None,
) -> list[CalibrationPrompt]:
    """``n`` prompts of about ``lengths`` tokens (one length or several), cycling over ``tasks`` and lengths
    (:func:`prompt_plan`), so the first ``k`` prompts are the same for any ``n >= k``."""
    specs = resolve_tasks(list(tasks or DEFAULT_TASKS) if not isinstance(tasks, str) else tasks)
    lengths = (lengths,) if isinstance(lengths, int) else tuple(lengths)
    generator_seed = TUNE_SEED_OFFSET + seed
    prompts = []
    for position, length, index in prompt_plan(n, len(specs), lengths):
        spec = specs[position]
        prompts.append(_generated(spec, renderer, length, index, generator_seed))
    return prompts


def _generated(spec: TaskSpec, renderer: PromptRenderer, length: int, index: int, seed: int) -> CalibrationPrompt:
    sample = generate(spec, renderer, length, index, seed=seed)
    return CalibrationPrompt(
        prompt_id=f"{sample.sample_id}/seed{seed}",
        input_ids=renderer.input_ids(sample),
        source=spec.name,
        family=spec.group,
        target_length=length,
        sample=sample,
    )


@dataclass(frozen=True)
class AnsweredSelection:
    """The calibration prompts :func:`answered_prompts` kept, and what it drew to find them."""

    prompts: list[CalibrationPrompt]
    drawn: dict[str, dict[str, int]]
    """Per ``task/length``: samples drawn and kept."""
    exhausted: list[str]
    """``task/length`` pairs given up on: ``max_misses`` draws in a row the full model did not answer."""
    max_misses: int

    def to_dict(self) -> dict[str, object]:
        return {"drawn": self.drawn, "exhausted": self.exhausted, "max_misses": self.max_misses}


def answered_prompts(
    renderer: PromptRenderer,
    n: int,
    lengths: int | Sequence[int],
    full_score: Callable[[CalibrationPrompt], float],
    answered_min: float,
    seed: int = 0,
    tasks: Sequence[str] | str | None = None,
    max_misses: int = MAX_MISSES,
) -> AnsweredSelection:
    """``n`` prompts the full model answers (``full_score(prompt) >= answered_min``), in :func:`prompt_plan`'s
    order of tasks and lengths: each slot takes the next sample of its task and length (the development split's
    samples 0, 1, 2, ...) that the full model answers. A task and length whose ``max_misses`` draws in a row all
    fail is given up (its later slots go to the others), so a task the model cannot do costs ``max_misses`` full
    answers, not the search. Deterministic for a seed; ``full_score`` is called once per drawn prompt, in order.
    Fewer than ``n`` prompts come back only when every task and length is given up."""
    specs = resolve_tasks(list(tasks or DEFAULT_TASKS) if not isinstance(tasks, str) else tasks)
    lengths = (lengths,) if isinstance(lengths, int) else tuple(lengths)
    generator_seed = TUNE_SEED_OFFSET + seed
    next_index: dict[tuple[int, int], int] = {}
    drawn: dict[str, dict[str, int]] = {}
    exhausted: list[str] = []
    kept: list[CalibrationPrompt] = []
    slots = _slots(len(specs), lengths)
    while len(kept) < n and len(exhausted) < len(specs) * len(lengths):
        position, length = next(slots)
        spec = specs[position]
        key = f"{spec.name}/{length}"
        if key in exhausted:
            continue
        counts = drawn.setdefault(key, {"drawn": 0, "kept": 0})
        for _ in range(max_misses):
            index = next_index.get((position, length), 0)
            next_index[(position, length)] = index + 1
            prompt = _generated(spec, renderer, length, index, generator_seed)
            counts["drawn"] += 1
            if full_score(prompt) >= answered_min:
                counts["kept"] += 1
                kept.append(prompt)
                break
        else:
            exhausted.append(key)
    return AnsweredSelection(kept, drawn, exhausted, max_misses)


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a JSONL file, one ``{"prompt": "..."}`` object per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f'{path}:{number} is not JSON ({error.msg}); write one {{"prompt": ...}} per line'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise ValueError(f'{path}:{number} has no non-empty "prompt" string; write one {{"prompt": ...}} per line')
        prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f'prompt file {path} holds no prompts; write one {{"prompt": ...}} per line')
    return prompts


def file_prompts(renderer: PromptRenderer, path: str | Path, n: int) -> list[CalibrationPrompt]:
    """The first ``n`` prompts of a JSONL file as model input (the renderer's chat template and middle
    truncation applied, as ``spts eval`` renders its prompts)."""
    prompts = []
    for i, text in enumerate(read_prompt_file(path)[:n]):
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        user = renderer.truncate_middle(text)
        prompt_text, special = renderer.text(user)
        ids = renderer.tokenizer(prompt_text, add_special_tokens=special, return_tensors="pt")["input_ids"]
        prompts.append(
            CalibrationPrompt(
                f"file/{i}/{digest}", ids.to(torch.long), source=Path(path).name,
                target_length=renderer.max_prompt_tokens or 0,
            )
        )  # fmt: skip
    return prompts


def known_tasks() -> tuple[str, ...]:
    return tuple(TASKS)


def task_names(names: Sequence[str]) -> tuple[str, ...]:
    """Task names of a list of tasks and groups (``ruler``, ``qa``, ``lbf``, ...), in order, without repeats;
    ValueError for an unknown one."""
    return tuple(spec.name for spec in resolve_tasks(list(names)))


def families_of(names: Sequence[str]) -> tuple[str, ...]:
    """The families (task groups) of these tasks, in order of first appearance."""
    return tuple(dict.fromkeys(TASKS[name].group for name in names))
