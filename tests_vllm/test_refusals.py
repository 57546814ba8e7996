"""What SPTS refuses at engine start, each with a message that says what to do.

The engine checks run on real ``VllmConfig`` objects as ``EngineArgs`` builds them (no engine needed); three
refusals are also checked end to end, by starting an engine the way a user would and reading its output.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from vllm.engine.arg_utils import EngineArgs

from conftest import (
    SMOLLM2,
    TINY,
    engine_kwargs,
    save_tiny_model,
    smollm2_path,
    start_engine_in_subprocess,
)
from spts.config import SPTSConfig
from spts.integrations.vllm.settings import SPTSVLLMConfigError, check_engine, parse_settings, raw_settings


@pytest.fixture(scope="module")
def good_config():
    """A VllmConfig SPTS accepts (SmolLM2; the tests below change one setting each)."""
    kwargs = engine_kwargs(smollm2_path(), 2048)
    return EngineArgs(**{k: v for k, v in kwargs.items() if k != "seed"}).create_engine_config()


def test_the_settings_spts_needs_are_accepted(good_config):
    check_engine(good_config)


def test_vllms_defaults_are_refused_chunked_prefill_first():
    config = EngineArgs(model=str(smollm2_path()), max_model_len=2048, enforce_eager=True).create_engine_config()
    with pytest.raises(SPTSVLLMConfigError, match=r"chunked prefill is on.*--no-enable-chunked-prefill"):
        check_engine(config)


def test_a_batch_smaller_than_the_context_is_refused(good_config):
    config = copy.deepcopy(good_config)
    config.scheduler_config.max_num_batched_tokens = 1024
    with pytest.raises(SPTSVLLMConfigError, match=r"max_num_batched_tokens=1024 is below max_model_len=2048"):
        check_engine(config)


def test_prefix_caching_is_refused():
    args = engine_kwargs(smollm2_path(), 2048)
    args.pop("seed")
    args["enable_prefix_caching"] = True
    with pytest.raises(SPTSVLLMConfigError, match=r"--no-enable-prefix-caching"):
        check_engine(EngineArgs(**args).create_engine_config())


def test_torch_compile_is_refused():
    args = engine_kwargs(smollm2_path(), 2048)
    args.pop("seed")
    args["enforce_eager"] = False
    with pytest.raises(SPTSVLLMConfigError, match=r"--enforce-eager"):
        check_engine(EngineArgs(**args).create_engine_config())


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("parallel_config", "tensor_parallel_size", 2, r"tensor_parallel_size=2.*probe scores"),
        ("parallel_config", "pipeline_parallel_size", 2, r"pipeline_parallel_size=2"),
        (None, "speculative_config", SimpleNamespace(method="ngram"), r"speculative decoding"),
        (None, "kv_transfer_config", SimpleNamespace(kv_connector="x"), r"KV connectors"),
    ],
)
def test_multi_rank_speculative_and_kv_connectors_are_refused(good_config, section, field, value, message):
    config = copy.deepcopy(good_config)
    # Set on the real config object as vLLM would hold it (building these for real needs several ranks/a drafter).
    object.__setattr__(getattr(config, section) if section else config, field, value)
    with pytest.raises(SPTSVLLMConfigError, match=message):
        check_engine(config)


def _hf_config(**changes):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, **changes})


def test_unknown_presets_and_settings_are_refused():
    with pytest.raises(SPTSVLLMConfigError, match=r"unknown preset 'llama-70b'.*known presets: .*smollm2-135m"):
        parse_settings({"preset": "llama-70b"}, _hf_config())
    with pytest.raises(SPTSVLLMConfigError, match=r"exactly one of preset, config, file"):
        parse_settings({"preset": "smollm2-135m", "config": {}}, _hf_config())
    with pytest.raises(SPTSVLLMConfigError, match=r"unknown keys \['budget'\]"):
        raw_settings(SimpleNamespace(additional_config={"spts": {"preset": "smollm2-135m", "budget": 3}}))
    with pytest.raises(SPTSVLLMConfigError, match=r"start_layer=17 must be less than the model's 6 layers"):
        parse_settings({"preset": "smollm2-135m"}, _hf_config())


def test_a_config_file_for_another_model_is_refused(tmp_path):
    path = SPTSConfig(start_layer=2, stage_boundaries=(3,), budgets=(8,)).to_file(
        tmp_path / "tuned.json", SimpleNamespace(config=SimpleNamespace(model_type="qwen2", num_hidden_layers=6))
    )
    with pytest.raises(SPTSVLLMConfigError, match=r"made for another model.*model_type qwen2"):
        parse_settings({"file": str(path)}, _hf_config())


def test_proxies_for_another_model_are_refused(tmp_path):
    from spts.integrations.vllm.models import _load_proxies

    proxies = _calibrated_proxies(tmp_path, intermediate_size=192)
    with pytest.raises(SPTSVLLMConfigError, match=r"built for another model: intermediate_size is 192.*256"):
        _load_proxies(proxies, _hf_config())


def _calibrated_proxies(folder, seed: int = 0, **changes):
    import torch
    from transformers import LlamaForCausalLM

    from spts.calibration import calibrate, save_proxies

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_hf_config(**changes)).eval()
    proxies = calibrate(model, torch.randint(3, 256, (512,)), tokens=512, seq_len=128, progress=False)
    return save_proxies(proxies, folder / f"proxies-{seed}.safetensors")


# ------------------------------------------------------------------ end to end: an engine start refused
def test_an_engine_start_with_chunked_prefill_fails_with_the_reason():
    kwargs = engine_kwargs(SMOLLM2, 2048, {"preset": "smollm2-135m"})
    kwargs["enable_chunked_prefill"] = True
    code, output = start_engine_in_subprocess(kwargs)
    assert code != 0 and "ENGINE STARTED" not in output
    assert "SPTSVLLMConfigError" in output and "--no-enable-chunked-prefill" in output


def test_an_engine_start_with_a_sliding_window_model_fails_with_the_reason(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**TINY, use_sliding_window=True, sliding_window=64, max_window_layers=0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    spts = {"config": {"start_layer": 2, "stage_boundaries": [4], "budgets": [32, 16]}}
    code, output = start_engine_in_subprocess(engine_kwargs(tmp_path, 512, spts, skip_tokenizer_init=True))
    assert code != 0 and "ENGINE STARTED" not in output
    assert "sliding-window attention" in output


def test_an_engine_start_with_proxies_of_other_weights_fails_with_the_reason(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "model", seed=0)
    other = _calibrated_proxies(tmp_path, seed=1)  # same shapes, other weights: only the fingerprint differs
    spts = {"config": {"start_layer": 2, "stage_boundaries": [4], "budgets": [32, 16]}, "proxies": str(other)}
    code, output = start_engine_in_subprocess(engine_kwargs(folder, 512, spts, skip_tokenizer_init=True))
    assert code != 0 and "ENGINE STARTED" not in output
    assert "built for another model: fingerprint" in output
