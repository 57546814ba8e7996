"""SPTSConfig options beyond the plain schedule in vLLM: LTP proxies and KV-complete skipping, each against the
HF runtime with the same settings."""

from __future__ import annotations

import random

import torch

from conftest import TINY_MIN_PROMPT, TINY_SPTS, greedy, hf_greedy, report, save_tiny_model, start_engine
from spts.config import SPTSConfig


def test_ltp_proxies_give_the_hf_runtimes_tokens(tmp_path, engines):
    from transformers import AutoModelForCausalLM

    from spts.calibration import calibrate, save_proxies

    folder = save_tiny_model("qwen2", tmp_path / "model")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(0)
    proxies = calibrate(hf, torch.randint(3, 256, (1024,)), tokens=1024, seq_len=256, d_low=64, rank=16,
                        progress=False)  # fmt: skip
    path = save_proxies(proxies, tmp_path / "proxies.safetensors")
    settings = {"config": TINY_SPTS, "proxies": str(path), "min_prompt_tokens": TINY_MIN_PROMPT}
    engines["ltp"] = start_engine(folder, 1024, settings, skip_tokenizer_init=True)
    rng = random.Random(11)
    prompt = [rng.randrange(3, 256) for _ in range(400)]
    ours = greedy(engines["ltp"], [prompt], 12)[0]
    assert report(engines["ltp"])["last"][0]["kv_tokens"][5] == 48
    assert ours == hf_greedy(folder, prompt, 12, SPTSConfig(**TINY_SPTS), path)


def test_kv_complete_gives_the_hf_runtimes_tokens(tmp_path, engines):
    folder = save_tiny_model("llama", tmp_path / "model", seed=2)
    config = {**TINY_SPTS, "kv_complete": True}
    engines["kvc"] = start_engine(folder, 1024, {"config": config, "min_prompt_tokens": TINY_MIN_PROMPT},
                                  skip_tokenizer_init=True)  # fmt: skip
    rng = random.Random(5)
    prompt = [rng.randrange(3, 256) for _ in range(400)]
    ours = greedy(engines["kvc"], [prompt], 12)[0]
    kv = report(engines["kvc"])["last"][0]["kv_tokens"]
    assert kv[2] == 400 and kv[5] == 48 + 16  # every candidate cached: the prompt, then the pruned candidates
    assert ours == hf_greedy(folder, prompt, 12, SPTSConfig(**config))
