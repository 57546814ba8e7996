"""Run methods over samples: one prefill (timed) and a greedy reply per sample and method, graded and
appended to a JSONL file at once, so an interrupted run resumes without recomputing finished samples.

Methods run back to back on each sample, so their TTFTs are measured side by side on the same prompt. With
``reuse_prefix``, SPTS schedules replay the layers below their start from the full model's run of the sample
(:mod:`spts.eval.prefix`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spts.eval.prefix import prefix_seconds, replaying, replays, reuse_depth
from spts.generation import greedy_continue
from spts.jsonl import read_rows
from spts.methods import Method
from spts.runtime.engine import ffn_scorer, last_stats
from spts.runtime.replay import RecordedPrefix, recording
from spts.tasks.metrics import score
from spts.tasks.prompts import EvalSample, PromptRenderer

ROWS_FILE = "samples.jsonl"
RUN_FILE = "run.json"


class ResumeError(ValueError):
    """An output folder holds results that the requested run must not be mixed with."""


def _check_run_info(out_dir: Path, run_info: dict[str, Any]) -> None:
    path = out_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("model") != run_info.get("model"):
            raise ResumeError(
                f"{out_dir} holds results of model {previous.get('model')!r}, not {run_info.get('model')!r}; "
                "use another output folder"
            )
        run_info = previous | run_info
    path.write_text(json.dumps(run_info, indent=2))


def _check_methods(rows: Sequence[dict[str, Any]], methods: Sequence[Method]) -> None:
    fingerprints = {m.name: m.fingerprint for m in methods}
    for row in rows:
        expected = fingerprints.get(row["method"])
        if expected is not None and row["method_fingerprint"] != expected:
            raise ResumeError(
                f"method {row['method']!r} in {ROWS_FILE} was run with another configuration "
                f"({row['method_fingerprint']} vs {expected} now); use another output folder or method name"
            )


def prompt_digest(ids: torch.Tensor) -> str:
    """Names the exact token ids a row answered: a sample id alone does not (another --seed, --chat, --depth,
    tokenizer or data generator version builds another prompt under the same id)."""
    return hashlib.sha256(ids.detach().to("cpu", torch.int64).numpy().tobytes()).hexdigest()[:16]


def _same_prompt(row: dict[str, Any], sample: EvalSample, ids: torch.Tensor) -> bool:
    """Whether ``row`` answered this sample's prompt. Rows written before rows named their prompt (``prompt_sha``)
    are checked on what they recorded: prompt length and references (which differ with the seed)."""
    recorded = row.get("prompt_sha")
    if recorded is not None:
        return recorded == prompt_digest(ids)
    return row["prompt_tokens"] == ids.shape[-1] and tuple(row["references"]) == tuple(sample.references)


def _check_prompts(
    path: Path,
    done: dict[tuple[str, str], dict[str, Any]],
    samples: dict[str, EvalSample],
    prompts: dict[str, torch.Tensor],
) -> None:
    """Refuses to resume when a finished row answered another prompt than this run builds for its sample id, so
    answers to different prompts are never averaged or paired as if they were one."""
    for (sample_id, method), row in done.items():
        if sample_id in prompts and not _same_prompt(row, samples[sample_id], prompts[sample_id]):
            raise ResumeError(
                f"{path} holds an answer of {method!r} to another prompt than this run builds for sample "
                f"{sample_id!r} (the folder was written with another --seed, --chat, --depth, --max-prompt-tokens, "
                "tokenizer or data version); use another output folder or the options it was written with"
            )


def _copied_rows(
    folders: Sequence[Path],
    samples: dict[str, EvalSample],
    methods: Sequence[Method],
    prompts: dict[str, torch.Tensor],
    done: dict[tuple[str, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rows of other output folders that answer a pending (sample, method) of this run: same method
    configuration (fingerprint, whatever its name there) and same prompt. A copied row keeps the run it was timed
    in, so its TTFT still pairs only with that run's full model; rows from before runs were named get one per
    folder."""
    by_fingerprint = {m.fingerprint: m for m in methods}
    copied: dict[tuple[str, str], dict[str, Any]] = {}
    for folder in folders:
        source = Path(folder) / ROWS_FILE
        if not source.is_file():
            raise FileNotFoundError(f"--copy-from {folder}: no {ROWS_FILE} there (an spts eval output folder)")
        for row in read_rows(source):
            method = by_fingerprint.get(row["method_fingerprint"])
            sample = samples.get(row["sample_id"])
            if method is None or sample is None:
                continue
            key = (sample.sample_id, method.name)
            if key in done or key in copied or not _same_prompt(row, sample, prompts[sample.sample_id]):
                continue
            copied[key] = row | {
                "method": method.name,
                "run": row.get("run", f"copied:{Path(folder).name}"),
                "copied_from": str(folder),
            }
    return list(copied.values())


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_method(
    model: nn.Module,
    tokenizer,
    ids: torch.Tensor,
    sample: EvalSample,
    method: Method,
    proxies: Any = None,
    *,
    record: RecordedPrefix | None = None,
    prefix: RecordedPrefix | None = None,
) -> dict[str, Any]:
    """One sample under one method: timed prefill, greedy reply from its cache, score.

    ``record`` (the full model only) is filled with its first layers, for SPTS schedules to replay from as their
    ``prefix`` (:mod:`spts.eval.prefix`)."""
    device = ids.device
    clock = functools.partial(_now, device)
    with method.applied(model, proxies):
        # Recording or replaying covers the prefill only: decoding runs every layer on the new tokens.
        with contextlib.ExitStack() as prefill_hooks:
            started = None
            if record is not None:
                if not method.unmodified:
                    raise ValueError(f"only the full model records a prefix, not {method.name!r}")
                started = prefill_hooks.enter_context(recording(model, record, clock))
            if prefix is not None:
                prefill_hooks.enter_context(replaying(model, prefix, method))
            start = clock()
            if started is not None:
                started()
            logits, cache = method.prefill(model, ids)
            ttft = clock() - start
        kv_fraction = method.kv_fraction(model, cache, int(ids.shape[-1]))
        sparse = last_stats(model).to_dict().get("sparse_density_per_layer") if method.config is not None else None
        # The static decoder: the model's own greedy tokens (tested), without its per-step overhead.
        prediction = greedy_continue(
            model, tokenizer, logits, cache, sample.max_new_tokens, stop_at_newline=sample.first_line_only, fast=True
        )
    graded = prediction.lstrip("\n").split("\n")[0] if sample.first_line_only else prediction
    row = {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "index": sample.index,
        "target_tokens": sample.target_tokens,
        "prompt_tokens": int(ids.shape[-1]),
        "prompt_sha": prompt_digest(ids),
        "depth": sample.depth,
        "method": method.name,
        "method_fingerprint": method.fingerprint,
        "prediction": prediction,
        "references": list(sample.references),
        "metric": sample.metric,
        "score": score(sample.metric, graded, sample.references, sample.all_classes, sample.aggregate),
        "ttft_s": ttft,
        "kv_fraction": kv_fraction,
    }
    if sparse:  # block-sparse attention: the share of key blocks its layers computed, on this prompt
        row["sparse_density"] = sum(sparse.values()) / len(sparse)
    if prefix is not None:
        # Its TTFT: the full model's time for the replayed layers on this sample, plus its own prefill.
        row["prefix_reused_s"] = prefix_seconds(prefix, method)
        row["ttft_s"] = ttft + row["prefix_reused_s"]
    return row


def run_eval(
    model: nn.Module,
    tokenizer,
    samples: Sequence[EvalSample],
    methods: Sequence[Method],
    out_dir: str | Path,
    *,
    renderer: PromptRenderer | None = None,
    proxies: Any = None,
    run_info: dict[str, Any] | None = None,
    progress: bool = True,
    reuse_prefix: bool = False,
    copy_from: Sequence[str | Path] = (),
) -> list[dict[str, Any]]:
    """Answer every sample with every method; rows go to ``out_dir/samples.jsonl`` as they finish.

    Rows already in that file (same sample id and method name) are kept, not recomputed. Resuming with
    a method name whose configuration changed, or another model (``run_info["model"]``), is refused.
    With ``reuse_prefix``, on a sample the full model still has to answer, SPTS schedules replay the layers below
    their start from its prefill (same answers; TTFT = the full model's time for those layers + their own).
    Every row written here names this call (``"run"``), so that a TTFT is compared only with the full model's
    on the same sample in the same run (:func:`spts.eval.report.summarize`), never with one timed on another day.
    ``copy_from``: output folders of earlier runs whose answers to the same prompts under the same method
    configurations are copied in instead of recomputed (each keeps the run it was timed in).
    Resuming is refused when a finished row answered another prompt than this call builds for its sample id.
    Returns the rows of the requested samples and methods, in sample then method order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renderer = renderer or PromptRenderer(tokenizer)
    _check_run_info(out_dir, run_info or {})
    path = out_dir / ROWS_FILE
    done = {(r["sample_id"], r["method"]): r for r in read_rows(path)}
    _check_methods(list(done.values()), methods)
    by_id = {s.sample_id: s for s in samples}
    if len(by_id) != len(samples):
        raise ValueError("samples repeat an id (task/length/index)")
    answered = {sample_id for sample_id, _ in done}
    prompts = {s.sample_id: renderer.input_ids(s) for s in samples if copy_from or s.sample_id in answered}
    _check_prompts(path, done, by_id, prompts)
    copied = _copied_rows([Path(f) for f in copy_from], by_id, methods, prompts, done)
    if copied:
        with path.open("a", encoding="utf-8") as sink:
            sink.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in copied)
        done.update(((row["sample_id"], row["method"]), row) for row in copied)
    pending = [(s, [m for m in methods if (s.sample_id, m.name) not in done]) for s in samples]
    pending = [(s, ms) for s, ms in pending if ms]
    device = next(model.parameters()).device
    # LTP proxies are loaded, checked and moved once, not inside every timed prefill.
    scorers = {m.name: ffn_scorer(model, m.config, proxies) if m.config else None for m in methods}
    if pending:
        _warm_up(model, renderer, pending[0][0], methods, scorers, device)
    run_id = uuid.uuid4().hex[:12]
    bar = tqdm(total=sum(len(ms) for _, ms in pending), desc="eval", unit="answer", disable=not progress)
    with path.open("a", encoding="utf-8") as sink:
        for sample, todo in pending:
            ids = (prompts[sample.sample_id] if sample.sample_id in prompts else renderer.input_ids(sample)).to(device)
            full = next((m for m in todo if m.unmodified), None)
            depth = reuse_depth(todo) if reuse_prefix and full is not None else 0
            recorded = RecordedPrefix.empty(ids, depth) if depth else None
            if recorded is not None:  # the full model first: it records what the others replay
                todo = [full, *(m for m in todo if m is not full)]
            for method in todo:
                bar.set_postfix_str(f"{sample.sample_id} {method.name}")
                row = run_method(
                    model, tokenizer, ids, sample, method, scorers[method.name],
                    record=recorded if method is full else None,
                    prefix=recorded if recorded is not None and replays(method) else None,
                )  # fmt: skip
                row["run"] = run_id
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                done[(sample.sample_id, method.name)] = row
                bar.update()
    bar.close()
    return [done[(s.sample_id, m.name)] for s in samples for m in methods]


def _warm_up(model, renderer, sample, methods, scorers, device) -> None:
    """One short prefill per method first, so the first timed sample does not pay for kernel set-up."""
    ids = renderer.input_ids(sample)[:, -256:].to(device)
    for method in methods:
        with torch.inference_mode(), method.applied(model, scorers[method.name]):
            method.prefill(model, ids)
