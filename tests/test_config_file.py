"""Config files: round trip, use through spts.enable, and refusals that say what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

import spts
from conftest import tiny_model
from spts import SPTSConfig
from spts.config_file import ConfigFileError

CONFIG = SPTSConfig(
    start_layer=2, stage_boundaries=(4,), budgets=(0.5, 12), delta=3, pool_kernel=3, end_layer=6, name="tuned"
)


def test_round_trip_keeps_every_field(tmp_path):
    path = CONFIG.to_file(tmp_path / "tuned.json", model=tiny_model("llama"), metadata={"target_speedup": 1.5})
    loaded = SPTSConfig.from_file(path)
    assert loaded == CONFIG and loaded.name == "tuned"
    assert json.loads(path.read_text())["metadata"] == {"target_speedup": 1.5}


def test_enable_takes_a_config_file(tmp_path):
    model = tiny_model("qwen2")
    path = CONFIG.to_file(tmp_path / "tuned.json", model=model)
    ids = torch.randint(0, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    with spts.enabled(model, CONFIG):
        expected = model(ids).logits
    with spts.enabled(model, path):
        assert spts.runtime.engine.runtime_of(model).config == CONFIG
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)


def test_a_file_for_another_model_is_refused(tmp_path):
    path = CONFIG.to_file(tmp_path / "tuned.json", model=tiny_model("llama"))
    deeper = tiny_model("llama", num_hidden_layers=8)
    with pytest.raises(ConfigFileError, match=r"made for another model \(num_layers 6 \(this model: 8\)\).*spts tune"):
        spts.enable(deeper, path)
    with pytest.raises(ConfigFileError, match=r"model_type llama \(this model: qwen2\)"):
        SPTSConfig.from_file(path, tiny_model("qwen2"))
    assert not spts.is_enabled(deeper)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON SPTS config file"),
        ('{"budgets": [1]}', 'not an SPTS config file'),
        ('{"format": "spts-config", "version": 99, "config": {}}', "format version 99"),
        ('{"format": "spts-config", "version": 1}', 'no "config" object'),
        ('{"format": "spts-config", "version": 1, "config": {"start_layer": 0, "stage_boundaries": [], '
         '"budgets": [4]}}', "invalid SPTS config: start_layer must be >= 1"),
        ('{"format": "spts-config", "version": 1, "config": {"start_layer": 1, "stage_boundaries": [], '
         '"budgets": [4], "speed": 9}}', "invalid SPTS config"),
    ],
)  # fmt: skip
def test_invalid_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigFileError, match=message):
        SPTSConfig.from_file(path)


def test_a_name_is_a_config_file_when_it_is_a_path_or_ends_in_json(tmp_path):
    from spts.config import is_config_file

    path = CONFIG.to_file(tmp_path / "tuned.json")
    assert SPTSConfig.named(path) == SPTSConfig.named(str(path)) == CONFIG
    assert SPTSConfig.named("smollm2-135m") == SPTSConfig.preset("smollm2-135m")
    assert is_config_file(tmp_path / "tuned.cfg") and not is_config_file("tuned")
    with pytest.raises(ConfigFileError, match=r"no SPTS config file at .*tuned\.cfg"):
        SPTSConfig.named(tmp_path / "tuned.cfg")
    with pytest.raises(ValueError, match="unknown preset 'tuned'"):
        SPTSConfig.named("tuned")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigFileError, match=r"no SPTS config file at .*missing\.json"):
        spts.enable(tiny_model("llama"), tmp_path / "missing.json")


def test_the_commands_preset_option_takes_a_preset_or_a_config_file_and_refuses_the_rest(tmp_path):
    import typer

    from spts.cli.common import base_config

    model = tiny_model("llama")
    path = CONFIG.to_file(tmp_path / "tuned.json", model=model)
    assert base_config(str(path), "some-model", model) == CONFIG
    assert base_config("smollm2-135m", "some-model", model) == SPTSConfig.preset("smollm2-135m")
    assert base_config(None, "smollm2-135m", model) == SPTSConfig.preset("smollm2-135m")
    assert base_config(None, "some-model", model) == SPTSConfig.for_model(model)
    with pytest.raises(typer.BadParameter, match=r"--preset no-such-preset: .*no-such-preset"):
        base_config("no-such-preset", "some-model", model)
    with pytest.raises(typer.BadParameter, match="made for another model"):
        base_config(str(path), "some-model", tiny_model("llama", num_hidden_layers=8))
    with pytest.raises(typer.BadParameter, match=r"missing\.json"):
        base_config(str(tmp_path / "missing.json"), "some-model", model)
