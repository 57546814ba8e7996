"""Locate where SPTS loses accuracy on a real model (issue 15, item 1): which layers, which answer token, which cache.

    python benchmarks/diagnose_quality.py --model smollm2-135m --length 4096 --samples 8 \\
        --out benchmarks/results/diagnose_smollm2_4k

Every sample is answered by the full model, by the base SPTS config, and by the base config restricted to one
layer range at a time (``SPTSConfig.end_layer``: the layers after the range run in full again). Per sample and
method it records:

(a) the task's own score, so the score lost by skipping each range alone can be compared with the whole config's;
(b) where the greedy answer leaves the full model's: at its first token (the prefill's final state is damaged) or
    later (the first token agrees, and the tokens decoded from the compressed cache go astray), plus the
    teacher-forced log-likelihood of the full model's answer under the method (prefill with the method, then one
    forward of the full answer over the method's cache): the cheap fidelity measure a tuner can optimise;
(c) for tasks whose answer sits verbatim in the prompt (needle values), the share of the answer's token positions
    among each skipping layer's candidates and among its cached (KV) positions;
(d) the same shares for the prompt's instruction spans: the user turn before its context (``head``: the first
    instruction line) and after it (``tail``: the trailing instruction and the question), so one can see whether
    the instruction and the question stay in each layer's cache (the LongBench-format family knows its context;
    other tasks use the first line and the text after the last blank line).

When the teacher-forced pass already picks the full model's token at every position (incl. its stop token), the
method's greedy answer is the full model's, and decoding it again is skipped (the row says ``"decoded": false``).
The ranges' rows are not "the base run with the other layers restored": a range's first layer sees every token
as a candidate, since no pruning happened before it.

Rows go to OUT/rows.jsonl as they finish (a rerun skips finished rows); OUT/summary.json, OUT/table.md and
OUT/answer_kept_by_layer.png summarise them. Samples come from the generators of ``spts eval`` with --seed 1 by
default, so they do not overlap ``spts eval``'s default samples (seed 0); ``--indices`` diagnoses chosen samples (known
losses and a few kept answers) instead of the first ``--samples``. CPU timings are indicative only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import torch
import transformers
import typer
from tqdm.auto import tqdm

import spts
from spts import SPTSConfig
from spts.config import PRESETS
from spts.generation import decode_step, prefill_with_cache, stop_token_ids
from spts.jsonl import read_rows
from spts.runtime.transformers_api import model_cache_argument
from spts.tasks import generate, resolve_tasks
from spts.tasks.metrics import score
from spts.tasks.prompts import EvalSample, PromptRenderer

ROWS_FILE = "rows.jsonl"
RUN_FILE = "run.json"
NEEDLE_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way to prefill: the full model (config None), the base config, or the base config on one range."""

    name: str
    kind: str
    """``full``, ``base``, ``range`` or ``pap`` (attention probing only)."""
    config: SPTSConfig | None
    layers: tuple[int, int] | None = None
    """The half-open layer range that skips tokens (None for the full model)."""

    def fingerprint(self) -> str:
        """What decides this method's outputs; a resumed run refuses rows computed under another one. LTP on/off
        is checked once per run (run.json)."""
        return config_fingerprint(self.config.to_dict() if self.config else None)


def config_fingerprint(config: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(behaviour(config), sort_keys=True).encode()).hexdigest()[:12]


def behaviour(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A config dict without its label and without fields at their default value: fields the library adds later
    (with defaults that keep the old behaviour) then leave the rows of an earlier run resumable."""
    if config is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(SPTSConfig) if f.default is not dataclasses.MISSING}
    out = {}
    for key, value in config.items():
        value = list(value) if isinstance(value, tuple | list) else value
        if key == "name" or (key in defaults and value == (list(d) if isinstance(d := defaults[key], tuple) else d)):
            continue
        out[key] = value
    return out


def thirds(layers: range, parts: int = 3) -> list[tuple[int, int]]:
    """``layers`` split into ``parts`` contiguous ranges, sizes as even as possible (larger ones first)."""
    n = len(layers)
    if n < parts:
        raise ValueError(f"cannot split {n} skipping layers into {parts} ranges")
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    out, start = [], layers.start
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """``"17-22,22-26,26-30"`` -> [(17, 22), (22, 26), (26, 30)] (half-open layer ranges)."""
    ranges = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if not match or int(match[1]) >= int(match[2]):
            raise ValueError(f"range {part!r} must read A-B with A < B (half-open: layers A..B-1)")
        ranges.append((int(match[1]), int(match[2])))
    if not ranges:
        raise ValueError("no ranges given")
    return ranges


def range_only(base: SPTSConfig, start: int, stop: int, num_layers: int) -> SPTSConfig:
    """``base`` skipping only layers [start, stop): its boundaries inside the range and the budgets of the stages
    that overlap it. The range's first layer sees every token as a candidate (no pruning before it), so this is
    "the base schedule's budgets on these layers", not exactly the base run with the other layers restored."""
    skipping = base.skipping_layers(num_layers)
    if start < skipping.start or stop > skipping.stop:
        raise ValueError(
            f"range {start}-{stop} must lie within the base config's skipping layers "
            f"{skipping.start}-{skipping.stop} (half-open)"
        )
    stages = sorted({base.stage_of_layer(layer) for layer in range(start, stop)})
    budgets = tuple(base.budgets[min(stage, len(base.budgets) - 1)] for stage in stages)
    return base.with_(
        start_layer=start,
        end_layer=None if stop >= num_layers else stop,
        stage_boundaries=tuple(b for b in base.stage_boundaries if start < b < stop),
        budgets=budgets,
        name=f"{base.name}[{start}:{stop}]",
    )


def build_methods(base: SPTSConfig, ranges: Sequence[tuple[int, int]], num_layers: int, pap: bool) -> list[Method]:
    skipping = base.skipping_layers(num_layers)
    methods = [Method("full", "full", None), Method("base", "base", base, (skipping.start, skipping.stop))]
    if pap:
        pap_config = base.with_(skip_ffn=False, prune=False, name=f"{base.name}-pap")
        methods.append(Method("pap", "pap", pap_config, (skipping.start, skipping.stop)))
    for start, stop in ranges:
        methods.append(
            Method(f"L{start}-{stop - 1}", "range", range_only(base, start, stop, num_layers), (start, stop))
        )
    return methods


# --------------------------------------------------------------------------- answer location


def answer_char_spans(sample: EvalSample, text: str) -> list[tuple[int, int]]:
    """Character spans of every occurrence of the references in the prompt text. Needle values (7 digits) occur
    once each; for other tasks (fwe's coded words, QA spans) every occurrence counts, so read those with care."""
    spans: list[tuple[int, int]] = []
    for reference in sample.references:
        # Digit or word boundaries, so that a value is not found inside a longer number or word.
        edge = r"\d" if reference.isdigit() else r"\w"
        pattern = rf"(?<!{edge}){re.escape(reference)}(?!{edge})"
        spans.extend(m.span() for m in re.finditer(pattern, text))
    return spans


def answer_positions(renderer: PromptRenderer, sample: EvalSample, ids: torch.Tensor) -> list[int] | None:
    """Token positions of the answer in the prompt (tokens overlapping a reference's characters), or None when
    the tokenizer gives no offsets or the answer is not in the prompt verbatim."""
    text, special = renderer.text(renderer.truncate_middle(sample.user), sample.answer_prefix, sample.use_chat_template)
    return _token_positions(renderer, text, special, ids, answer_char_spans(sample, text))


def _token_positions(renderer: PromptRenderer, text: str, special: bool, ids: torch.Tensor, spans) -> list[int] | None:
    """Token positions overlapping any of the character ``spans`` of ``text`` (None without offsets or matches)."""
    if not spans:
        return None
    try:
        encoded = renderer.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets
        return None
    if encoded["input_ids"] != ids[0].tolist():
        return None  # offsets would describe other tokens than the model reads
    positions = [
        i
        for i, (lo, hi) in enumerate(encoded["offset_mapping"])
        if hi > lo and any(lo < end and hi > start for start, end in spans)
    ]
    return positions or None


def instruction_spans(renderer: PromptRenderer, sample: EvalSample, ids: torch.Tensor) -> dict[str, list[int] | None]:
    """Token positions of the user turn's ``head`` (before the context) and ``tail`` (after it: the trailing
    instruction and the question). The LongBench-format family records its context; for other tasks the head is
    the first line and the tail the last paragraph (when short) or line."""
    user = renderer.truncate_middle(sample.user)
    text, special = renderer.text(user, sample.answer_prefix, sample.use_chat_template)
    offset = text.find(user)
    if offset < 0:
        return {"head": None, "tail": None}
    record = sample.meta.get("record")
    if record is not None and record["context"] in user:
        head_end = user.index(record["context"])
        tail_start = head_end + len(record["context"])
    else:
        head_end = user.find("\n") if "\n" in user else len(user)
        # The last paragraph when it is short (QA: "Question: ...\nAnswer:"), else the last line (RULER's question).
        paragraph = user.rfind("\n\n") + 2 if "\n\n" in user else 0
        tail_start = paragraph if len(user) - paragraph < 1000 else user.rfind("\n") + 1
    head = [(offset, offset + head_end)] if head_end > 0 else []
    tail = [(offset + tail_start, offset + len(user))] if tail_start < len(user) else []
    return {name: _token_positions(renderer, text, special, ids, spans) for name, spans in
            (("head", head), ("tail", tail))}  # fmt: skip


# --------------------------------------------------------------------------- one answer


def greedy(
    tokenizer, logits: torch.Tensor, step: Any, max_new_tokens: int, stop_ids: frozenset[int], newline: bool
) -> list[int]:
    """The loop of ``spts.generation.greedy_continue`` returning tokens, a final stop token included (it is part of
    the answer a method must reproduce). ``step`` is a ``decode_step(..., fast=True)`` loaded with the cache."""
    tokens: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            if int(token) in stop_ids:
                break
            if newline and "\n" in tokenizer.decode(tokens, skip_special_tokens=True).lstrip("\n"):
                break
            logits = step(token)
    return tokens


def answer_text(tokenizer, tokens: Sequence[int], stop_ids: frozenset[int]) -> str:
    """The reply as ``greedy_continue`` returns it: without the stop token."""
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def teacher_forced(
    model, first_logits: torch.Tensor, cache: Any, tokens: Sequence[int]
) -> tuple[list[float], list[bool]]:
    """Log-probabilities of ``tokens`` (the full model's answer) given the prompt as the method cached it: the
    first from the prefill's logits, the rest from ONE forward of the answer over the cache (which it extends).
    Also, per position, whether the argmax is the given token."""
    first = torch.log_softmax(first_logits[0].float(), -1)
    logprobs = [float(first[tokens[0]])]
    hits = [int(first.argmax()) == tokens[0]]
    if len(tokens) > 1:
        inputs = torch.tensor([list(tokens[:-1])], device=first_logits.device)
        with torch.inference_mode():
            out = model(inputs, use_cache=True, **{model_cache_argument(model): cache})
        rest = torch.log_softmax(out.logits[0].float(), -1)
        targets = torch.tensor(tokens[1:], device=rest.device)
        logprobs += rest.gather(1, targets[:, None])[:, 0].tolist()
        hits += (rest.argmax(-1) == targets).tolist()
    return logprobs, [bool(h) for h in hits]


def divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """First index where two token lists differ (a shorter list differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def value_token_span(tokenizer, tokens: Sequence[int], references: Sequence[str]) -> tuple[int, int] | None:
    """Token indices [start, end) of the first reference found in the decoded answer ``tokens``, or None."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    found = [(text.find(r), r) for r in references if r and text.find(r) >= 0]
    if not found:
        return None
    char_start, reference = min(found)
    char_end = char_start + len(reference)
    ends = [len(tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)) for i in range(len(tokens))]
    start = next(i for i, e in enumerate(ends) if e > char_start)
    end = next(i for i, e in enumerate(ends) if e >= char_end) + 1
    return start, end


def kept_fractions(stats: Any, positions: list[int], num_layers: int) -> tuple[list[float], list[float]]:
    """Per layer, the share of ``positions`` among the cached positions and among the candidates (1.0 for layers
    that ran in full: they cache every position)."""
    wanted = torch.tensor(positions)
    kv, candidates = [1.0] * num_layers, [1.0] * num_layers
    for layer, kept in stats.kv_positions.items():
        kv[layer] = float(torch.isin(wanted, kept[0].cpu()).float().mean())
    for layer, cands in stats.candidates.items():
        candidates[layer] = float(torch.isin(wanted, cands[0].cpu()).float().mean())
    return kv, candidates


def run_one(
    model,
    tokenizer,
    ids: torch.Tensor,
    sample: EvalSample,
    method: Method,
    scorer: Any,
    full: dict[str, Any] | None,
    positions: list[int] | None,
    answer_tokens: int,
    stop_ids: frozenset[int],
    spans: dict[str, list[int] | None] | None = None,
) -> dict[str, Any]:
    """One sample under one method. ``full`` is the full model's row (None while computing it)."""
    num_layers = model.config.num_hidden_layers
    context = spts.enabled(model, method.config, scorer) if method.config else contextlib.nullcontext()
    decode_s: float | None = None
    with context:
        start = time.perf_counter()
        logits, cache = prefill_with_cache(model, ids)
        ttft = time.perf_counter() - start
        stats = spts.last_stats(model) if method.config else None
        # The static decoder copies the cache into its own buffers, so the teacher-forced forward below may extend
        # the DynamicCache without touching what the decoder reads.
        step = decode_step(model, cache, sample.max_new_tokens, fast=True)
        if full is None:  # the full model: decode, then score its own answer (a check: every argmax must agree)
            start = time.perf_counter()
            tokens = greedy(tokenizer, logits, step, sample.max_new_tokens, stop_ids, sample.first_line_only)
            decode_s = time.perf_counter() - start
            logprobs, hits = teacher_forced(model, logits, cache, tokens)
        else:
            logprobs, hits = teacher_forced(model, logits, cache, full["answer_tokens"])
            if all(hits) and not sample.first_line_only:
                # Every greedy step would pick the full model's token: the method's greedy answer IS the full
                # model's, so decoding it again (a third of a CPU answer's time) is skipped.
                tokens = list(full["answer_tokens"])
            else:
                start = time.perf_counter()
                tokens = greedy(tokenizer, logits, step, sample.max_new_tokens, stop_ids, sample.first_line_only)
                decode_s = time.perf_counter() - start
    prediction = answer_text(tokenizer, tokens, stop_ids)
    logprobs, hits = logprobs[:answer_tokens], hits[:answer_tokens]
    graded = prediction.lstrip("\n").split("\n")[0] if sample.first_line_only else prediction
    full_tokens = full["answer_tokens"] if full else tokens
    row: dict[str, Any] = {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "index": sample.index,
        "seed": sample.meta.get("seed"),
        "depth": sample.depth,
        "prompt_tokens": int(ids.shape[-1]),
        "method": method.name,
        "kind": method.kind,
        "layers": list(method.layers) if method.layers else None,
        "config": method.config.to_dict() if method.config else None,
        "fingerprint": method.fingerprint(),
        "prediction": prediction,
        "references": list(sample.references),
        "score": score(sample.metric, graded, sample.references, sample.all_classes, sample.aggregate),
        "answer_tokens": tokens,
        "full_answer_tokens": full_tokens[:answer_tokens],
        "first_token_match": bool(tokens[:1] == full_tokens[:1]),
        "answer_match": tokens == full_tokens,
        "divergence_index": divergence(tokens, full_tokens),
        "value_span": full["value_span"] if full else value_token_span(tokenizer, tokens, sample.references),
        "tf_logprobs": logprobs,
        "tf_mean_logprob": sum(logprobs) / len(logprobs),
        "tf_top1": sum(hits) / len(hits),
        "decoded": decode_s is not None or full is None,
        "ttft_s": ttft,
        "decode_s": decode_s,
        "kv_fraction": stats.kv_fraction if stats else 1.0,
        "answer_positions": positions,
        "kv_answer_kept": None,
        "candidate_answer_kept": None,
    }
    if stats is not None and positions:
        row["kv_answer_kept"], row["candidate_answer_kept"] = kept_fractions(stats, positions, num_layers)
    row["span_positions"] = spans
    row["span_kv_kept"] = {
        name: kept_fractions(stats, where, num_layers)[0] for name, where in (spans or {}).items() if stats and where
    }
    return row


# --------------------------------------------------------------------------- resumable rows


def check_run(out: Path, info: dict[str, Any]) -> None:
    """Refuse to mix rows of another model, length or seed into one folder."""
    path = out / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        for key in ("model", "length", "seed", "ltp"):
            if previous.get(key) != info.get(key):
                raise typer.BadParameter(
                    f"{out} holds a run with {key}={previous.get(key)!r}, not {info.get(key)!r}; use another --out"
                )
    path.write_text(json.dumps(info, indent=2))


# --------------------------------------------------------------------------- summary


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _value_logprob(row: dict[str, Any], first: int | None = None) -> float | None:
    """Mean teacher-forced log-probability of the reference value's tokens in the full answer (the first ``first``
    of them), or None when the full answer does not contain a reference within the teacher-forced tokens."""
    span = row["value_span"]
    if span is None or span[0] >= len(row["tf_logprobs"]):
        return None
    start, end = span
    values = row["tf_logprobs"][start : min(end, start + first) if first else end]
    return sum(values) / len(values) if values else None


def loss_category(row: dict[str, Any]) -> str:
    """Where a lost answer left the full model's: its first token, or later (before, at, inside or after the span
    of the reference value in the full model's answer)."""
    d = row["divergence_index"]
    if d == 0:
        return "first token"
    span = row["value_span"]
    if d is None:
        return "same tokens"  # cannot lose points with the full model's tokens; kept to make counts add up
    if span is None:
        return "later (value not in full answer)"
    start, end = span
    if d < start:
        return "later, before the value"
    if d == start:
        return "later, at the value's first token"
    if d < end:
        return "later, inside the value"
    return "later, after the value"


LOSS_CATEGORIES = (
    "first token",
    "later, before the value",
    "later, at the value's first token",
    "later, inside the value",
    "later, after the value",
    "later (value not in full answer)",
    "same tokens",
)


def summarize(rows: list[dict[str, Any]], methods: list[Method], num_layers: int) -> dict[str, Any]:
    by_sample: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_sample[row["sample_id"]][row["method"]] = row
    # Only samples every method answered, so every column averages over the same prompts.
    complete = {s: r for s, r in by_sample.items() if all(m.name in r for m in methods)}
    tasks = sorted({r["full"]["task"] for r in complete.values()})
    full_score = _mean([r["full"]["score"] for r in complete.values()]) or 0.0
    out: dict[str, Any] = {"samples": len(complete), "tasks": {}, "methods": {}, "ranges": [], "layers": {}}
    for task in tasks:
        out["tasks"][task] = {
            "n": sum(1 for r in complete.values() if r["full"]["task"] == task),
            **{
                m.name: 100 * _mean([r[m.name]["score"] for r in complete.values() if r["full"]["task"] == task])
                for m in methods
            },
        }
    for m in methods:
        pairs = [(r["full"], r[m.name]) for r in complete.values()]
        mean_score = _mean([row["score"] for _, row in pairs]) or 0.0
        lost = [(f, row) for f, row in pairs if row["score"] < f["score"]]
        wrong = [(f, row) for f, row in pairs if f["score"] == 1.0 and row["score"] == 0.0]
        categories = {c: sum(1 for _, row in lost if loss_category(row) == c) for c in LOSS_CATEGORIES}
        first = categories["first token"]
        out["methods"][m.name] = {
            "kind": m.kind,
            "layers": list(m.layers) if m.layers else None,
            "config": m.config.to_dict() if m.config else None,
            "score": 100 * mean_score,
            "retention": mean_score / full_score if full_score else None,
            "score_lost": 100 * (full_score - mean_score),
            "ttft_speedup": statistics.median(f["ttft_s"] / row["ttft_s"] for f, row in pairs) if pairs else None,
            "kv_fraction": _mean([row["kv_fraction"] for _, row in pairs]),
            "first_token_match": _mean([float(row["first_token_match"]) for _, row in pairs]),
            "answer_match": _mean([float(row["answer_match"]) for _, row in pairs]),
            "tf_mean_logprob": _mean([row["tf_mean_logprob"] for _, row in pairs]),
            "tf_gap": _mean([row["tf_mean_logprob"] - f["tf_mean_logprob"] for f, row in pairs]),
            "tf_first_token_gap": _mean([row["tf_logprobs"][0] - f["tf_logprobs"][0] for f, row in pairs]),
            "tf_later_gap": _mean(
                [
                    _mean(row["tf_logprobs"][1:]) - _mean(f["tf_logprobs"][1:])
                    for f, row in pairs
                    if len(f["tf_logprobs"]) > 1
                ]
            ),
            "tf_top1": _mean([row["tf_top1"] for _, row in pairs]),
            # The value's tokens in the full answer, given the full answer's prefix: whether the method can still
            # retrieve it from its cache, whatever it did to the tokens before (list markers, formatting).
            "tf_value_gap": _mean([_value_logprob(row) - _value_logprob(f) for f, row in pairs if _value_logprob(f)]),
            "tf_value_first_gap": _mean(
                [_value_logprob(row, 1) - _value_logprob(f, 1) for f, row in pairs if _value_logprob(f, 1)]
            ),
            "tf_value_first_prob": _mean([math.exp(v) for _, row in pairs if (v := _value_logprob(row, 1))]),
            "lost": {
                "n": len(lost),
                "first_token": first,
                "later": len(lost) - first - categories["same tokens"],
                "categories": categories,
                "full_right_method_wrong": len(wrong),
                "full_right_method_wrong_first_token": sum(1 for _, row in wrong if row["divergence_index"] == 0),
                "tf_gap_lost": _mean([row["tf_mean_logprob"] - f["tf_mean_logprob"] for f, row in lost]),
                "tf_gap_kept": _mean(
                    [row["tf_mean_logprob"] - f["tf_mean_logprob"] for f, row in pairs if row["score"] >= f["score"]]
                ),
            },
        }
        if m.kind == "range":
            out["ranges"].append(
                {"method": m.name, "layers": list(m.layers), "score": 100 * mean_score, "lost": out["methods"][m.name]}
            )
    out["ranges"] = [
        {"method": r["method"], "layers": r["layers"], "score": r["score"], "score_lost": r["lost"]["score_lost"]}
        for r in out["ranges"]
    ]
    # (c) answer tokens kept, per layer: needle tasks (one occurrence per value) and each other located task.
    groups = {"needles": [t for t in tasks if t in NEEDLE_TASKS], **{t: [t] for t in tasks if t not in NEEDLE_TASKS}}
    for group, members in groups.items():
        located = [r for r in complete.values() if r["full"]["task"] in members and r["full"]["answer_positions"]]
        if not located:
            continue
        entry: dict[str, Any] = {"n": len(located), "tasks": members, "methods": {}}
        for m in methods:
            if m.config is None:
                continue
            kv = [r[m.name]["kv_answer_kept"] for r in located]
            cand = [r[m.name]["candidate_answer_kept"] for r in located]
            lost = [r[m.name]["kv_answer_kept"] for r in located if r[m.name]["score"] < r["full"]["score"]]
            kept = [r[m.name]["kv_answer_kept"] for r in located if r[m.name]["score"] >= r["full"]["score"]]

            def per_layer(lists: list[list[float]]) -> list[float | None]:
                return [_mean([v[i] for v in lists]) for i in range(num_layers)]

            entry["methods"][m.name] = {
                "kv": per_layer(kv),
                "candidates": per_layer(cand),
                "kv_lost_samples": per_layer(lost) if lost else None,
                "kv_other_samples": per_layer(kept) if kept else None,
                "n_lost": len(lost),
            }
        out["layers"][group] = entry
    # (d) instruction spans kept, per task and layer.
    out["spans"] = {}
    for task in tasks:
        in_task = [r for r in complete.values() if r["full"]["task"] == task]
        entry = {}
        for span in ("head", "tail"):
            located = [r for r in in_task if (r["full"].get("span_positions") or {}).get(span)]
            if not located:
                continue
            entry[span] = {
                "n": len(located),
                "tokens": _mean([len(r["full"]["span_positions"][span]) for r in located]),
                "methods": {
                    m.name: [
                        _mean([kept[span][i] for r in located if span in (kept := r[m.name]["span_kv_kept"])])
                        for i in range(num_layers)
                    ]
                    for m in methods
                    if m.config is not None
                },
            }
        if entry:
            out["spans"][task] = entry
    return out


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def write_table(summary: dict[str, Any], methods: list[Method], header: str, base: SPTSConfig) -> str:
    names = [m.name for m in methods]
    lines = [header, ""]
    lines += [
        f"Samples answered by every method: {summary['samples']}. Scores 0-100 (each task's own metric, as "
        "`spts eval` grades). Lost = the method scores lower than the full model on that sample.",
        "",
        "### Methods",
        "",
        "| method | layers skipping | score | retention | lost vs full | TTFT speedup | KV kept | first token = full "
        "| whole answer = full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = summary["methods"][m.name]
        layers = "-" if not m.layers else f"{m.layers[0]}-{m.layers[1] - 1}"
        lines.append(
            f"| {m.name} | {layers} | {_num(s['score'])} | {_pct(s['retention'])} | {_num(s['score_lost'])} "
            f"| {_num(s['ttft_speedup'], '.2f')}x | {_pct(s['kv_fraction'])} | {_pct(s['first_token_match'])} "
            f"| {_pct(s['answer_match'])} |"
        )
    lines += [
        "",
        "TTFT speedups are medians of per-sample ratios on a shared 2-core CPU: indicative only.",
        "",
        "### Teacher-forced fidelity (the full model's answer scored under each method)",
        "",
        "| method | mean log-prob gap | 1st token | later tokens | value tokens | value's 1st token "
        "| P(value's 1st token) | top-1 = full's token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = summary["methods"][m.name]
        lines.append(
            f"| {m.name} | {_num(s['tf_gap'], '.3f')} | {_num(s['tf_first_token_gap'], '.3f')} "
            f"| {_num(s['tf_later_gap'], '.3f')} | {_num(s['tf_value_gap'], '.3f')} "
            f"| {_num(s['tf_value_first_gap'], '.3f')} | {_pct(s['tf_value_first_prob'])} | {_pct(s['tf_top1'])} |"
        )
    lines += [
        "",
        "Mean log-probability per token of the full model's greedy answer (its first tokens, stop token included) "
        "given the method's prefill and cache, minus the full model's own (0 = as sure as the full model, negative = "
        "less sure). Value tokens: the reference value's tokens inside the full answer (when it contains one), given "
        "the full answer before them.",
        "",
        "### Scores per task",
        "",
        "| task | n | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for task, s in summary["tasks"].items():
        lines.append(f"| {task} | {s['n']} | " + " | ".join(_num(s[n]) for n in names) + " |")
    lines += [
        "",
        "### Where lost answers leave the full model's",
        "",
        "Among samples a method scores lower than the full model on: the first greedy token where its answer differs "
        "from the full model's, relative to the reference value's tokens in the full model's answer.",
        "",
        "| method | lost | first token | later | " + " | ".join(LOSS_CATEGORIES[1:-1]) + " | full right, method wrong "
        "(of which 1st token) | TF gap on lost | TF gap on others |",
        "|---|---|---|---|" + "---|" * (len(LOSS_CATEGORIES) - 2) + "---|---|---|",
    ]
    for m in methods[1:]:
        lost = summary["methods"][m.name]["lost"]
        cats = " | ".join(str(lost["categories"][c]) for c in LOSS_CATEGORIES[1:-1])
        lines.append(
            f"| {m.name} | {lost['n']} | {lost['first_token']} | {lost['later']} | {cats} "
            f"| {lost['full_right_method_wrong']} ({lost['full_right_method_wrong_first_token']}) "
            f"| {_num(lost['tf_gap_lost'], '.3f')} | {_num(lost['tf_gap_kept'], '.3f')} |"
        )
    if summary["ranges"]:
        base_lost = summary["methods"]["base"]["score_lost"]
        lines += [
            "",
            "### Score lost per layer range (each range skipped alone, the rest in full)",
            "",
            "| skipping only | layers | score | points lost vs full |",
            "|---|---|---|---|",
        ]
        for r in summary["ranges"]:
            lines.append(
                f"| {r['method']} | {r['layers'][0]}-{r['layers'][1] - 1} | {_num(r['score'])} "
                f"| {_num(r['score_lost'])} |"
            )
        start, stop = methods[1].layers
        lines.append(
            f"| base (all) | {start}-{stop - 1} | {_num(summary['methods']['base']['score'])} | {_num(base_lost)} |"
        )
    for group, entry in summary["layers"].items():
        shown = [n for n in names if n in entry["methods"]]
        first = min(min(m.layers[0] for m in methods if m.layers), base.start_layer)
        num_layers = len(next(iter(entry["methods"].values()))["kv"])
        lines += [
            "",
            f"### Answer tokens kept per layer: {group} ({entry['n']} samples)",
            "",
            "Share of the answer's token positions in the prompt (the needle values; for other tasks every occurrence "
            "of the answer words) that each layer cached (KV), and in parentheses among its candidates. Layers that "
            "run in full keep 100%."
            + (
                f" Last column: {shown[0]}'s KV share on the samples it lost / the others."
                if shown and entry["methods"][shown[0]]["n_lost"]
                else ""
            ),
            "",
            "| layer | " + " | ".join(shown) + (f" | {shown[0]}: lost / others |" if shown else " |"),
            "|---|" + "---|" * (len(shown) + 1),
        ]
        for layer in range(first, num_layers):
            cells = [
                f"{_pct(entry['methods'][n]['kv'][layer])} ({_pct(entry['methods'][n]['candidates'][layer])})"
                for n in shown
            ]
            split = entry["methods"][shown[0]] if shown else None
            lost_cell = "-"
            if split and split["kv_lost_samples"]:
                other = split["kv_other_samples"][layer] if split["kv_other_samples"] else None
                lost_cell = f"{_pct(split['kv_lost_samples'][layer])} / {_pct(other)}"
            lines.append(f"| {layer} | " + " | ".join(cells) + f" | {lost_cell} |")
    for task, entry in summary.get("spans", {}).items():
        first = min(min(m.layers[0] for m in methods if m.layers), base.start_layer)
        shown = [n for n in names if any(n in e["methods"] for e in entry.values())]
        described = ", ".join(f"{span} ~{e['tokens']:.0f} tokens, {e['n']} samples" for span, e in entry.items())
        lines += [
            "",
            f"### Instruction spans cached per layer: {task} ({described})",
            "",
            "Share of the user turn's head (before the context: the first instruction line) and tail (after it: the "
            "trailing instruction and the question) that each layer cached. Layers that run in full keep 100%.",
            "",
            "| layer | " + " | ".join(f"{n}: {span}" for span in entry for n in shown) + " |",
            "|---|" + "---|" * (len(entry) * len(shown)),
        ]
        num_layers = len(next(iter(next(iter(entry.values()))["methods"].values())))
        for layer in range(first, num_layers):
            cells = [_pct(entry[span]["methods"].get(n, [None] * num_layers)[layer]) for span in entry for n in shown]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], methods: list[Method], base: SPTSConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(summary["layers"].items())
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.2), squeeze=False)
    first = min(min(m.layers[0] for m in methods if m.layers), base.start_layer) - 1
    for ax, (group, entry) in zip(axes[0], groups, strict=True):
        for i, (name, data) in enumerate(entry["methods"].items()):
            xs = list(range(first, len(data["kv"])))
            color = f"C{i}"
            # Earlier lines are drawn wider, so a later method that coincides with one leaves it visible.
            width = max(1.2, 4.0 - 0.8 * i)
            ax.plot(xs, [100 * data["kv"][x] for x in xs], marker="o", ms=3, lw=width, color=color, label=name)
            ax.plot(xs, [100 * data["candidates"][x] for x in xs], ls="--", lw=1, color=color, alpha=0.6)
        ax.set_title(f"{group}: answer tokens kept ({entry['n']} samples)")
        ax.set_xlabel("layer")
        ax.set_ylabel("% of answer token positions")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="solid: cached, dashed: candidates", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def base_config(spec: str | None, model: str, lm: Any) -> SPTSConfig:
    """The config the diagnosis starts from: a preset, one derived for the model, or fields read from JSON
    (for schedules that are not presets, e.g. fraction budgets for a model whose derived ones exceed the prompt)."""
    if spec is None:
        return SPTSConfig.preset(model) if model in PRESETS else SPTSConfig.for_model(lm)
    if spec == "derived":
        return SPTSConfig.for_model(lm)
    if spec in PRESETS:
        return SPTSConfig.preset(spec)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        fields = json.loads(path.read_text())
        # spts tune's tuned.json (the config file format) or bare SPTSConfig fields.
        return SPTSConfig.from_file(path, lm) if fields.get("format") == "spts-config" else SPTSConfig(**fields)
    raise ValueError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}), 'derived', nor a JSON file")


def parse_indices(spec: str) -> list[int]:
    """``"2,3,7"`` -> [2, 3, 7]; a clear error for anything that is not distinct non-negative integers."""
    try:
        values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"--indices must be comma-separated integers, got {spec!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise typer.BadParameter(f"--indices must list distinct sample indices >= 0, got {spec!r}")
    return values


def _index_text(chosen: Sequence[int]) -> str:
    return f"0-{len(chosen) - 1}" if chosen == list(range(len(chosen))) else ",".join(map(str, chosen))


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@app.command()
def main(
    model: Annotated[str, typer.Option(help="zoo model name (see src/spts/zoo/catalogue.py)")] = "smollm2-135m",
    length: Annotated[int, typer.Option(help="prompt length in tokens (chat template included)")] = 4096,
    samples: Annotated[int, typer.Option(help="samples per task (a larger number extends a finished run)")] = 8,
    indices: Annotated[
        str | None,
        typer.Option(help="comma-separated sample indices to diagnose instead of 0..samples-1 (e.g. known losses)"),
    ] = None,
    tasks: Annotated[
        str, typer.Option(help="comma-separated tasks or groups (as spts eval)")
    ] = "niah_single,niah_multikey,niah_multivalue,fwe",
    seed: Annotated[int, typer.Option(help="task seed; spts eval's default is 0, so 1 gives unseen samples")] = 1,
    config: Annotated[
        str | None,
        typer.Option(
            help="base config: a preset name, 'derived' (SPTSConfig.for_model) or a JSON file of SPTSConfig fields; "
            "default: the model's preset, else derived"
        ),
    ] = None,
    ltp: Annotated[bool, typer.Option(help="LTP FFN proxies for the zoo model (as spts eval --ltp)")] = True,
    ranges: Annotated[
        str | None,
        typer.Option(help="half-open layer ranges skipped one at a time, e.g. 17-22,22-26,26-30; default: thirds"),
    ] = None,
    pap: Annotated[bool, typer.Option(help="also run the base config with attention probing only")] = False,
    answer_tokens: Annotated[int, typer.Option(help="full-answer tokens compared and teacher-forced")] = 32,
    out: Annotated[Path | None, typer.Option(help="output folder (resumed if it exists)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda; default: cuda if available")] = None,
) -> None:
    """Locate SPTS's accuracy loss: per layer range, per answer token (first vs later), per layer's cache."""
    from spts.zoo import ZOO, load_pretrained

    if model not in ZOO:
        raise typer.BadParameter(f"--model must be a zoo model: {', '.join(ZOO)}")
    try:
        specs = resolve_tasks(tasks)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    chosen = parse_indices(indices) if indices else list(range(samples))
    out = out or Path(f"benchmarks/results/diagnose_{model.split('-')[0]}_{length // 1024}k")
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm, tokenizer = load_pretrained(model, dtype=dtype)
    lm = lm.to(device)
    num_layers = lm.config.num_hidden_layers
    try:
        base = base_config(config, model, lm)
        base.validate_for(num_layers)
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(f"--config: {error}") from None
    if all(base.stage_budget(stage, length) >= length for stage in range(base.num_stages)):
        # e.g. a derived config's token budgets (13K for a 32K-context model) at a 4K prompt: nothing is skipped.
        typer.echo(f"warning: {base.name}'s budgets keep every token of a {length}-token prompt; SPTS = full model")
    chosen_ranges = parse_ranges(ranges) if ranges else thirds(base.skipping_layers(num_layers))
    try:
        methods = build_methods(base, chosen_ranges, num_layers, pap)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    window = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
    renderer = PromptRenderer(tokenizer, "auto", window - 512 if window > 1024 else None)  # as spts eval
    proxies = None
    if ltp:
        from spts.calibration.shipped import zoo_proxies

        proxies = zoo_proxies(model, lm, tokenizer, progress=False)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    info = {
        "model": model,
        "length": length,
        "seed": seed,
        "ltp": ltp,
        "device": device,
        "dtype": str(dtype),
        "base_config": base.to_dict(),
        "methods": {m.name: m.config.to_dict() if m.config else None for m in methods},
    }
    check_run(out, info)

    path = out / ROWS_FILE
    rows = read_rows(path)
    fingerprints = {m.name: m.fingerprint() for m in methods}
    for row in rows:
        # Compared through the stored config rather than the stored hash, so rows stay valid across library
        # releases that add config fields.
        if row["method"] in fingerprints and config_fingerprint(row["config"]) != fingerprints[row["method"]]:
            raise typer.BadParameter(f"{path} has rows of {row['method']!r} under another configuration; use --out")
    done = {(r["sample_id"], r["method"]): r for r in rows}
    # Index-major across tasks (as spts eval), so a run stopped early has about as many samples of each task.
    items = [
        generate(spec, renderer, length, i, seed)
        for i in tqdm(chosen, desc="prompts", unit="index", leave=False)
        for spec in specs
    ]
    todo = [(s, [m for m in methods if (s.sample_id, m.name) not in done]) for s in items]
    todo = [(s, ms) for s, ms in todo if ms]
    scorers = {m.name: spts.ffn_scorer(lm, m.config, proxies) if m.config else None for m in methods}
    stop_ids = stop_token_ids(lm, tokenizer)
    if todo:  # one short prefill per method first, so the first timed one does not pay for set-up
        warm = renderer.input_ids(todo[0][0])[:, -256:].to(device)
        for m in methods:
            with spts.enabled(lm, m.config, scorers[m.name]) if m.config else contextlib.nullcontext():
                prefill_with_cache(lm, warm)
    bar = tqdm(total=sum(len(ms) for _, ms in todo), desc="diagnose", unit="answer")
    with path.open("a", encoding="utf-8") as sink:
        for sample, pending in todo:
            ids = renderer.input_ids(sample).to(device)
            positions = answer_positions(renderer, sample, ids.cpu())
            spans = instruction_spans(renderer, sample, ids.cpu())
            for m in pending:  # "full" comes first in methods, so its row exists before the others need it
                bar.set_postfix_str(f"{sample.sample_id} {m.name}")
                full = done.get((sample.sample_id, "full"))
                row = run_one(
                    lm, tokenizer, ids, sample, m, scorers[m.name], full, positions, answer_tokens, stop_ids, spans
                )
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                done[(sample.sample_id, m.name)] = row
                bar.update()
    bar.close()

    wanted = {s.sample_id for s in items}
    rows = [r for (sid, name), r in done.items() if sid in wanted and name in fingerprints]
    summary = summarize(rows, methods, num_layers)
    now = datetime.now(UTC)
    header = (
        f"Quality diagnosis: {model}, {length}-token prompts, tasks {','.join(s.name for s in specs)}, seed {seed}, "
        f"samples {_index_text(chosen)} of each task. {now:%Y-%m-%d}, {machine_name(device)}, "
        f"{device} {str(dtype).removeprefix('torch.')}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}. "
        f"Base config {base.name}: start {base.start_layer}, "
        f"boundaries {base.stage_boundaries}, budgets {base.budgets}, delta {base.delta}, pool {base.pool_kernel}; "
        f"FFN policy {'LTP' if proxies is not None else 'attention score'}.\n\nCommand: `{command}`"
    )
    summary |= {
        "model": model,
        "length": length,
        "seed": seed,
        "date": now.isoformat(timespec="seconds"),
        "machine": machine_name(device),
        "device": device,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": command,
        "base_config": base.to_dict(),
        "ltp": proxies is not None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(write_table(summary, methods, header, base))
    plot(summary, methods, base, out / "answer_kept_by_layer.png")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    app()
