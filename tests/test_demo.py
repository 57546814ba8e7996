"""The demo runs end to end on a tiny model and reports both sides with every figure present."""

from __future__ import annotations

import json

from conftest import tiny_model
from spts import SPTSConfig
from spts.demo import run_demo
from test_zoo_haystack import _tiny_tokenizer


def test_demo_reports_answers_ttft_and_cache_for_both_sides():
    tokenizer = _tiny_tokenizer(chat=True)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)
    result = run_demo(model, tokenizer, "tiny-llama", prompt_tokens=300, config=config, max_new_tokens=4, repeats=2)
    assert 250 <= result.prompt_tokens <= 300
    for run in (result.full, result.spts):
        assert run.ttft_seconds > 0 and run.kv_cache_bytes > 0 and isinstance(run.answer, str)
    # Full model: every layer caches every token; SPTS: layers 2-5 keep half or a quarter.
    assert result.full.kv_tokens == 6 * result.prompt_tokens
    assert result.spts.kv_tokens < result.full.kv_tokens
    assert result.spts.kv_cache_bytes < result.full.kv_cache_bytes
    assert result.speedup > 0
    record = json.loads(json.dumps(result.to_dict()))
    assert record["config"]["budgets"] == [0.5, 0.25] and record["ltp"] is False
