"""`spts bench --engine vllm`'s SPTS settings: what --preset names, as the deployment settings parse them."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import TINY_SPTS
from spts.config import SPTSConfig
from spts.integrations.vllm.bench import _settings
from spts.integrations.vllm.settings import parse_settings

HF_CONFIG = SimpleNamespace(model_type="llama", num_hidden_layers=6)


def test_a_config_file_preset_is_passed_as_the_file_the_engine_reads(tmp_path):
    config = SPTSConfig(**TINY_SPTS)
    path = config.to_file(tmp_path / "tuned.json", SimpleNamespace(config=HF_CONFIG))
    settings = _settings("any-model", tmp_path, str(path))
    assert settings == {"file": str(path)}
    assert parse_settings(settings, HF_CONFIG).config == config


def test_a_preset_name_and_the_models_own_preset_are_passed_by_name(tmp_path):
    assert _settings("any-model", tmp_path, "smollm2-135m") == {"preset": "smollm2-135m"}
    assert _settings("smollm2-135m", tmp_path, None) == {"preset": "smollm2-135m"}
    assert parse_settings(_settings("smollm2-135m", tmp_path, None), SimpleNamespace(num_hidden_layers=30)).config == (
        SPTSConfig.preset("smollm2-135m")
    )
