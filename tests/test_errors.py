"""Every bad input gets a clear error that says what to do, before any computation goes wrong."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import spts
from conftest import tiny_model
from spts import SPTSConfig, UnsupportedInputError, UnsupportedModelError

SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(8, 4), delta=1)


def test_unsupported_model_type_lists_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match=r"model_type='gpt2'.*llama, mistral, qwen2, qwen3"):
        spts.enable(model, SMALL)
    assert not spts.is_enabled(model)


def test_schedule_deeper_than_model():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="start_layer=10 must be less than the model's 6 layers"):
        spts.enable(model, "llama-3.1-8b")
    with pytest.raises(ValueError, match=r"stage_boundaries\[1\]=7 must be less than the model's 6 layers"):
        spts.enable(model, SPTSConfig(start_layer=1, stage_boundaries=(3, 7), budgets=(8, 4)))
    assert not spts.is_enabled(model)


def test_unknown_preset_and_wrong_config_type():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        spts.enable(model, "fast")
    with pytest.raises(TypeError, match="config must be an SPTSConfig"):
        spts.enable(model, {"start_layer": 1})
    with pytest.raises(ValueError, match="selection must be 'probe' or 'random'"):
        spts.enable(model, SMALL, selection="oracle")
    with pytest.raises(TypeError, match="proxies must be LTP proxies"):
        spts.enable(model, SMALL, proxies=42)


def test_empty_prompt():
    model = tiny_model("llama")
    with spts.enabled(model, SMALL), pytest.raises(UnsupportedInputError, match="empty prompt"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_padded_batch_is_refused():
    model = tiny_model("llama")
    ids = torch.randint(0, 90, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with spts.enabled(model, SMALL):
        with pytest.raises(UnsupportedInputError, match="padded batches are not supported"):
            model(ids, attention_mask=mask)
        with pytest.raises(UnsupportedInputError, match="padded batches"):
            model.generate(ids, attention_mask=mask, max_new_tokens=2, pad_token_id=0)
        model(ids, attention_mask=torch.ones_like(ids))  # an all-ones mask is fine


def test_static_cache_is_refused():
    model = tiny_model("llama")
    ids = torch.randint(0, 90, (1, 12))
    with (
        spts.enabled(model, SMALL),
        pytest.raises(UnsupportedInputError, match="needs a DynamicCache of DynamicLayer layers; got StaticCache"),
    ):
        model.generate(ids, max_new_tokens=2, cache_implementation="static", pad_token_id=0)


def test_unsupported_attention_backend():
    model = tiny_model("llama", attn="flex_attention")
    with pytest.raises(UnsupportedModelError, match="attention implementation 'flex_attention'"):
        spts.enable(model, SMALL)


def test_sliding_window_layers_are_refused():
    model = tiny_model("mistral")
    model.config.sliding_window = 16
    with pytest.raises(UnsupportedModelError, match="sliding-window attention"):
        spts.enable(model, SMALL)


def test_stats_before_prefill_or_enable():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="not enabled"):
        spts.last_stats(model)
    with spts.enabled(model, SMALL), pytest.raises(ValueError, match="no SPTS prefill has run"):
        spts.last_stats(model)


def test_output_attentions_is_refused():
    model = tiny_model("llama", attn="eager")
    with spts.enabled(model, SMALL), pytest.raises(UnsupportedInputError, match="output_attentions"):
        model(torch.randint(0, 90, (1, 12)), output_attentions=True)


def test_backend_switched_after_enable_is_refused_at_prefill():
    model = tiny_model("llama")
    with spts.enabled(model, SMALL):
        model.config._attn_implementation = "flex_attention"
        with pytest.raises(UnsupportedModelError, match="attention implementation 'flex_attention'"):
            model(torch.randint(0, 90, (1, 12)))


def test_model_split_across_devices_is_refused():
    model = tiny_model("llama")
    model.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}
    with pytest.raises(UnsupportedModelError, match="split across devices"):
        spts.enable(model, SMALL)


def test_chunked_prefill_is_refused():
    model = tiny_model("llama")
    model.generation_config.prefill_chunk_size = 8
    with pytest.raises(UnsupportedModelError, match="chunked prefill"):
        spts.enable(model, SMALL)


def test_calibration_needs_the_unmodified_model():
    from spts.calibration import calibrate

    model = tiny_model("llama")
    with spts.enabled(model, SMALL), pytest.raises(ValueError, match=r"call spts.disable\(model\) first"):
        calibrate(model, torch.randint(0, 90, (256,)), tokens=256, seq_len=128, progress=False)
