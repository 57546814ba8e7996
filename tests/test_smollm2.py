"""The real SmolLM2-135M-Instruct (from PyPI) finds a needle in ~6K tokens with SPTS skipping most tokens."""

from __future__ import annotations

import math

import pytest
import torch

import spts
from spts import SPTSConfig
from spts.data.haystack import build_needle_prompt, prompt_input_ids
from spts.zoo import load_pretrained


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("smollm2-135m")


@pytest.mark.slow
def test_needle_at_6k_tokens_with_spts(smollm2):
    model, tokenizer = smollm2
    prompt = build_needle_prompt(tokenizer, 6000, depth=0.5, seed=0)
    ids = prompt_input_ids(tokenizer, prompt)
    length = ids.shape[1]
    assert 5800 <= length <= 6000
    with spts.enabled(model, SPTSConfig.preset("smollm2-135m")):
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, pad_token_id=0
        )
        stats = spts.last_stats(model)
    answer = tokenizer.decode(out[0, length:], skip_special_tokens=True)
    assert prompt.is_correct(answer), f"expected {prompt.answer!r} in {answer!r}"

    assert stats.prompt_length == length
    deep = [layer for layer in stats.layers if layer.layer_idx >= 23]
    # Most tokens are skipped in the deep layers: at most 10% compute attention or the FFN there.
    limit = math.ceil(0.1 * length)
    assert all(layer.attention_active <= limit and layer.ffn_active <= limit for layer in deep)
    assert stats.kv_fraction < 0.7
