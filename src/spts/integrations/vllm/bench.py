"""``spts bench --engine vllm``: TTFT and E2E latency of stock vLLM vs vLLM+SPTS on the same prompts.

Two engines with identical settings (enforce_eager, chunked prefill and prefix caching off, as SPTS requires), one
with SPTS switched on through ``additional_config``, both alive for the whole run. Each prompt is timed on both,
alternating which goes first, ``repeats`` times; medians are reported. TTFT is the wall time of a request for one
token (prefill plus one sampling step); E2E of a request for ``new_tokens`` greedy tokens (EOS ignored).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spts.config import PRESETS, SPTSConfig
from spts.integrations.vllm.settings import engine_arguments, named_settings
from spts.machine import machine


def _model_folder(model: str) -> Path:
    if Path(model).is_dir():
        return Path(model)
    from spts.zoo.load import pretrained_path

    return pretrained_path(model)


def _settings(model: str, folder: Path, preset: str | None) -> dict[str, Any]:
    """A preset name, a config file (``spts tune``'s ``tuned.json``), the model's own preset, or a derived config."""
    name = preset or (model if model in PRESETS else None)
    if name:
        return named_settings(name)
    from transformers import AutoConfig

    config = SPTSConfig.for_model(AutoConfig.from_pretrained(folder))
    return {"config": config.to_dict()}


def bench_vllm(
    model: str,
    lengths: list[int],
    preset: str | None,
    out: Path,
    repeats: int = 3,
    command: str = "",
    new_tokens: int = 128,
    dtype: str = "bfloat16",
) -> None:
    """Time stock vLLM and vLLM+SPTS on one needle prompt per length; write rows.jsonl, summary.json, table.md."""
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # LLM.apply_model(spts_report)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from spts.data.haystack import build_needle_prompt, prompt_input_ids

    from .models import spts_report

    folder = _model_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = {n: build_needle_prompt(tokenizer, n, seed=0) for n in lengths}
    ids = {n: prompt_input_ids(tokenizer, p)[0].tolist() for n, p in prompts.items()}
    max_len = -(-(max(len(i) for i in ids.values()) + new_tokens + 16) // 1024) * 1024
    settings = _settings(model, folder, preset)
    engines = {
        "stock": LLM(**engine_arguments(folder, max_len, dtype=dtype, seed=0)),
        "spts": LLM(**engine_arguments(folder, max_len, settings, dtype=dtype, seed=0)),
    }
    first = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    full = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)

    def timed(side: str, n: int, params) -> tuple[float, Any]:
        start = time.perf_counter()
        output = engines[side].generate([{"prompt_token_ids": ids[n]}], params, use_tqdm=False)[0]
        return time.perf_counter() - start, output

    rows: list[dict[str, Any]] = []
    warm = {"prompt_token_ids": ids[min(lengths)][-512:]}
    for llm in engines.values():
        llm.generate([warm], first, use_tqdm=False)
    for n in lengths:
        times: dict[str, dict[str, list[float]]] = {s: {"ttft": [], "e2e": []} for s in engines}
        answers: dict[str, str] = {}
        for r in range(repeats):
            order = ("stock", "spts") if r % 2 == 0 else ("spts", "stock")
            for side in order:
                times[side]["ttft"].append(timed(side, n, first)[0])
            for side in order:
                seconds, output = timed(side, n, full)
                times[side]["e2e"].append(seconds)
                answers[side] = output.outputs[0].text
        kv = engines["spts"].apply_model(spts_report)[0]["last"]
        row = {
            "model": model,
            "prompt_tokens": len(ids[n]),
            "new_tokens": new_tokens,
            "repeats": repeats,
            **{f"{side}_{metric}_s": statistics.median(v) for side in engines for metric, v in times[side].items()},
            "times": times,
            "correct": {side: prompts[n].is_correct(answers[side]) for side in engines},
            "spts_kv_tokens": kv[-1]["kv_tokens"] if kv else None,
        }
        row["ttft_speedup"] = row["stock_ttft_s"] / row["spts_ttft_s"]
        row["e2e_speedup"] = row["stock_e2e_s"] / row["spts_e2e_s"]
        rows.append(row)
    _write(rows, out, model, settings, dtype, command)
    print((out / "table.md").read_text())


def _write(rows: list[dict[str, Any]], out: Path, model: str, settings: dict, dtype: str, command: str) -> None:
    import torch
    import vllm

    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    context = {
        "model": model,
        "spts": settings,
        "dtype": dtype,
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "machine": machine(),
        "threads": "VLLM_CPU_OMP_THREADS_BIND=" + os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "unset (vLLM: one core)"),
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "command": command,
    }
    (out / "summary.json").write_text(json.dumps({"context": context, "rows": rows}, indent=2))
    lines = [
        f"stock vLLM vs vLLM+SPTS, {model}, {dtype}, vllm {context['vllm']}, torch {context['torch']}, "
        f"{context['machine']}, {context['threads']}, {context['date']}. SPTS: {settings}. "
        f"Command: {command}",
        "",
        "| prompt tokens | stock TTFT (s) | SPTS TTFT (s) | TTFT speedup | stock E2E (s) | SPTS E2E (s) | E2E speedup "
        "| needle found (stock / SPTS) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt_tokens']} | {r['stock_ttft_s']:.2f} | {r['spts_ttft_s']:.2f} | {r['ttft_speedup']:.2f}x "
            f"| {r['stock_e2e_s']:.2f} | {r['spts_e2e_s']:.2f} | {r['e2e_speedup']:.2f}x "
            f"| {'yes' if r['correct']['stock'] else 'no'} / {'yes' if r['correct']['spts'] else 'no'} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
