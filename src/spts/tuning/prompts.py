"""Calibration prompts for ``spts tune``: generated offline like ``spts eval``'s, but never the same ones, or a
user's JSONL file.

``spts eval`` draws sample ``i`` of a task from ``random.Random("spts-eval/{task}/{length}/{seed}/{i}")`` with
``--seed`` (default 0). Tuning draws from the same generators with seed ``TUNE_SEED_OFFSET + --seed``, so its
prompts (needles, keys, values, questions, filler) differ from every ``spts eval`` run with ``--seed`` below
``TUNE_SEED_OFFSET``: a schedule is never tuned on the prompts it is evaluated on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spts.tasks import TASKS, generate, resolve_tasks
from spts.tasks.prompts import PromptRenderer

TUNE_SEED_OFFSET = 1_000_000
"""Generator seed of tuning prompts = this + ``--seed``; ``spts eval`` uses ``--seed`` itself (default 0)."""

DEFAULT_TASKS = ("niah_single", "niah_multikey", "vt", "qa_squad", "niah_multivalue", "qa_hotpotqa")
"""RULER-style needles, variable tracking and QA: tasks whose answer is a short span of the context, so the
first answer tokens say whether the compressed prefill still carries what the answer needs."""


@dataclass(frozen=True)
class CalibrationPrompt:
    prompt_id: str
    """Stable key of the prompt in ``trials.jsonl``: task/length/index/seed, or the file line and a text hash."""
    input_ids: torch.Tensor = field(compare=False, repr=False)
    """(1, n) token ids, chat template applied as ``spts eval`` does."""
    source: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[-1])


def generated_prompts(
    renderer: PromptRenderer, n: int, length: int, seed: int = 0, tasks: Sequence[str] | str | None = None
) -> list[CalibrationPrompt]:
    """``n`` prompts of about ``length`` tokens, cycling over ``tasks``: prompt ``i`` is sample ``i // len(tasks)``
    of task ``tasks[i % len(tasks)]``, so the first ``k`` prompts are the same for any ``n >= k``."""
    specs = resolve_tasks(list(tasks or DEFAULT_TASKS) if not isinstance(tasks, str) else tasks)
    generator_seed = TUNE_SEED_OFFSET + seed
    prompts = []
    for i in range(n):
        spec = specs[i % len(specs)]
        sample = generate(spec, renderer, length, i // len(specs), seed=generator_seed)
        prompts.append(
            CalibrationPrompt(
                prompt_id=f"{sample.sample_id}/seed{generator_seed}",
                input_ids=renderer.input_ids(sample),
                source=spec.name,
            )
        )
    return prompts


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
        prompts.append(CalibrationPrompt(f"file/{i}/{digest}", ids.to(torch.long), source=Path(path).name))
    return prompts


def known_tasks() -> tuple[str, ...]:
    return tuple(TASKS)
