"""Scoring configs on one prompt and storing the rows: the full model's reference run, then each config's
replayed prefill (its task answer when graded) and teacher-forced answer (:mod:`spts.tuning.objective`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from spts.config import SPTSConfig
from spts.runtime.engine import ffn_scorer
from spts.tuning.objective import Reference, reference_run, score_config
from spts.tuning.prompts import CalibrationPrompt, grade
from spts.tuning.search import TrialStore
from spts.tuning.space import behaviour


def score_prompt(
    model: nn.Module,
    tokenizer: Any,
    prompt: CalibrationPrompt,
    pending: Sequence[str],
    configs: dict[str, SPTSConfig],
    scorers: Scorers,
    store: TrialStore,
    answer_tokens: int,
    graded: bool = False,
    bar: Any = None,
) -> None:
    """Score the ``pending`` configs on one prompt: one full-model reference run (recording the layers below the
    deepest start layer among them), then each config's replayed prefill and teacher-forced answer; ``graded``:
    also the full model's and each config's own answer to the task's budget, graded by its metric."""
    if not pending:
        return
    sample = prompt.sample if graded else None
    task = _task(prompt, graded)
    reference = _reference(model, tokenizer, prompt, max(configs[fp].start_layer for fp in pending), store,
                           answer_tokens, graded)  # fmt: skip
    for fp in pending:
        if bar is not None:
            bar.set_postfix_str(f"{prompt.source} {fp}")
        score = score_config(model, reference, configs[fp], scorers(configs[fp]), tokenizer=tokenizer, **task)
        row = {
            "kind": "trial",
            "fingerprint": fp,
            "prompt_id": prompt.prompt_id,
            "config": behaviour(configs[fp]),
            "answer_tokens": len(score.matches),
            "first_match": score.first_match,
            "fidelity": score.fidelity,
            "logprob_gap": score.logprob_gap(reference.full_logprobs),
            "matches": list(score.matches),
            "logprobs": list(score.logprobs),
            "kv_tokens": score.kv_tokens,
        }
        if sample is not None:
            row.update(task_answer=score.task_answer, task_score=grade(sample, score.task_answer or ""))
        store.append(row)
        if bar is not None:
            bar.update()


def _task(prompt: CalibrationPrompt, graded: bool) -> dict[str, Any]:
    sample = prompt.sample if graded else None
    if graded and sample is None:
        raise ValueError(f"prompt {prompt.prompt_id} has no references to grade answers against")
    return {"task_tokens": sample.max_new_tokens, "stop_at_newline": sample.first_line_only} if sample else {}


def _reference(
    model: nn.Module,
    tokenizer: Any,
    prompt: CalibrationPrompt,
    depth: int,
    store: TrialStore,
    answer_tokens: int,
    graded: bool,
) -> Reference:
    """The full model's run on ``prompt`` recording layers ``[0, depth)``, its answers stored as the prompt's
    reference row (once: a resumed run scores against the answer its earlier trials were scored against)."""
    sample = prompt.sample if graded else None
    ids = prompt.input_ids.to(next(model.parameters()).device)
    reference = reference_run(model, tokenizer, prompt.prompt_id, ids, depth, answer_tokens, **_task(prompt, graded))
    recorded = store.references.get(prompt.prompt_id)
    if recorded is not None:
        reference.answer_ids, reference.full_logprobs = recorded["answer_ids"], recorded["full_logprobs"]
    if recorded is None or (sample is not None and "task_score" not in recorded):
        row = {**reference.to_row(), "source": prompt.source}
        if recorded is not None:
            row.update(answer=recorded["answer"])
        if sample is not None:
            row.update(task_answer=reference.task_answer, task_score=grade(sample, reference.task_answer or ""))
        store.append(row)
    return reference


def full_score(
    model: nn.Module, tokenizer: Any, prompt: CalibrationPrompt, store: TrialStore, answer_tokens: int
) -> float:
    """The full model's task score on a generated prompt: stored, or from a reference run that is then stored (so
    choosing prompts the full model answers costs one full answer per prompt drawn, once across resumes)."""
    recorded = store.references.get(prompt.prompt_id)
    if recorded is None or "task_score" not in recorded:
        _reference(model, tokenizer, prompt, 0, store, answer_tokens, graded=True)
    return store.references[prompt.prompt_id]["task_score"]


def score_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[CalibrationPrompt],
    fingerprints: Sequence[str],
    configs: dict[str, SPTSConfig],
    scorers: Scorers,
    store: TrialStore,
    answer_tokens: int,
    graded: bool = False,
    bar: Any = None,
) -> None:
    """Every config of ``fingerprints`` on every prompt, skipping trials already stored complete."""
    if bar is not None:
        bar.total += sum(not store.complete(fp, p.prompt_id, graded) for fp in fingerprints for p in prompts)
        bar.refresh()
    for prompt in prompts:
        pending = [fp for fp in fingerprints if not store.complete(fp, prompt.prompt_id, graded)]
        score_prompt(model, tokenizer, prompt, pending, configs, scorers, store, answer_tokens, graded, bar)


class Scorers:
    """FFN scorers built once per range of skipping layers (LTP proxies are checked and moved once)."""

    def __init__(self, model: nn.Module, proxies: Any) -> None:
        self.model, self.proxies = model, proxies
        self._built: dict[tuple[int, int | None], Any] = {}

    def __call__(self, config: SPTSConfig) -> Any:
        if self.proxies is None:
            return None
        key = (config.start_layer, config.end_layer)
        if key not in self._built:
            self._built[key] = ffn_scorer(self.model, config, self.proxies)
        return self._built[key]

    def last_layer(self) -> Any:
        """The scorer of a config that skips only the last layer (what the speed model times)."""
        return self(
            SPTSConfig(start_layer=self.model.config.num_hidden_layers - 1, stage_boundaries=(), budgets=(1.0,))
        )


def load_proxies(proxies: Any) -> Any:
    """LTP proxies from a file path, or ``proxies`` as given (an object, an FFN scorer or None)."""
    if isinstance(proxies, str | os.PathLike):
        from spts.calibration.proxy_file import load_proxies as read_proxies

        return read_proxies(proxies)
    return proxies


def ffn_policy(proxies: Any) -> str:
    """How skipped FFNs are scored, in words (the run's ``ffn_policy``)."""
    if proxies is None:
        return "attention score"
    meta = getattr(proxies, "meta", None)
    if meta is not None:
        return f"LTP ({meta.variant}, d_low={meta.d_low}, rank={meta.rank})"
    return type(proxies).__name__
