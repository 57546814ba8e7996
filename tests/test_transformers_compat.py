"""The transformers calling conventions spts depends on, and the error when one of them breaks.

transformers 5.24 renamed the decoder layers' cache argument (``past_key_values`` -> ``cache``); SPTS
must take the cache under either name, and a layer that stops receiving its cache must make the
prefill raise, never return logits computed over an empty cache.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
import transformers

import spts
from conftest import FAMILIES, tiny_model
from spts import SPTSConfig, TransformersCompatibilityError
from spts.runtime.engine import runtime_of
from spts.runtime.transformers_api import (
    SUPPORTED_TRANSFORMERS,
    cache_argument,
    model_cache_argument,
    output_cache,
)

SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)
ROOT = Path(__file__).resolve().parents[1]


def _ids(model, length=48):
    return torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))


def _wrap_layer(model, layer_idx, change_kwargs):
    """Put a wrapper in front of the (SPTS-patched) forward of one layer that rewrites its keyword arguments,
    as a transformers release that passes them differently would."""
    layer = model.model.layers[layer_idx]
    patched = layer.forward

    def forward(hidden_states, **kwargs):
        return patched(hidden_states, **change_kwargs(kwargs))

    layer.forward = forward


def test_supported_range_matches_the_declared_dependency():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [d for d in dependencies if re.match(r"transformers\b", d)]
    assert declared == [f"transformers{SUPPORTED_TRANSFORMERS}"]


def test_the_pinned_set_is_in_the_supported_range():
    from packaging.specifiers import SpecifierSet

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["transformers"] in SpecifierSet(SUPPORTED_TRANSFORMERS)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_that_stops_receiving_its_cache_makes_the_prefill_raise(family):
    model = tiny_model(family)
    spts.enable(model, SMALL)
    # What transformers 5.24 did to spts 0.1: the cache arrived under a name the skipping pass did not read.
    _wrap_layer(model, 3, lambda kw: {k: v for k, v in kw.items() if k not in ("cache", "past_key_values")})
    with pytest.raises(TransformersCompatibilityError) as error:
        model(_ids(model), use_cache=True)
    message = str(error.value)
    assert "layers [3]" in message
    assert transformers.__version__ in message and SUPPORTED_TRANSFORMERS in message


def test_a_layer_without_rotary_tables_raises():
    model = tiny_model("llama")
    spts.enable(model, SMALL)
    _wrap_layer(model, 2, lambda kw: {k: v for k, v in kw.items() if k != "position_embeddings"})
    with pytest.raises(TransformersCompatibilityError, match="position_embeddings"):
        model(_ids(model), use_cache=True)


def test_a_layer_that_skips_the_skipping_pass_raises_even_without_a_cache():
    model = tiny_model("llama")
    spts.enable(model, SMALL)
    layer = model.model.layers[4]
    original = runtime_of(model)._saved_forwards[4] or type(layer).forward.__get__(layer)
    layer.forward = original  # as if upstream called the layer some other way than through its forward
    with pytest.raises(TransformersCompatibilityError, match=r"layers \[4\]"):
        model(_ids(model), use_cache=False)


def test_the_check_passes_on_a_normal_prefill_with_and_without_cache():
    model = tiny_model("qwen2")
    with spts.enabled(model, SMALL):
        out = model(_ids(model), use_cache=True)
        assert spts.cache_tokens_per_layer(output_cache(out)) == [48, 24, 24, 12, 12, 6]
        model(_ids(model), use_cache=False)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_decoding_layers_pass_the_cache_on_under_the_name_they_received(name):
    model = tiny_model("llama")
    spts.enable(model, SMALL)
    runtime = runtime_of(model)
    seen: dict = {}

    def original(hidden_states, **kwargs):
        seen.update(kwargs)
        return hidden_states

    with torch.inference_mode():
        cache = output_cache(model(_ids(model), use_cache=True))
        hidden = torch.zeros(1, 1, model.config.hidden_size)
        mask = torch.zeros(1, 1, 1, 49)
        runtime._layer_forward(5, model.model.layers[5], original, hidden, attention_mask=mask, **{name: cache})
    assert seen[name] is cache
    assert not ({"cache", "past_key_values"} - {name}) & seen.keys()
    # Layer 5 cached 6 tokens: the mask is cut to them plus the new token.
    assert seen["attention_mask"].shape[-1] == 7


def test_cache_argument_and_output_cache_read_either_name():
    assert cache_argument({"past_key_values": 1}) == ("past_key_values", 1)
    assert cache_argument({"cache": 2}) == ("cache", 2)
    assert cache_argument({}) == ("cache", None)
    with pytest.raises(TransformersCompatibilityError, match="both"):
        cache_argument({"cache": 1, "past_key_values": 2})
    assert output_cache({"past_key_values": 3}) == 3
    assert output_cache({"cache": 4}) == 4
    assert output_cache({"logits": 5}) is None


def test_model_cache_argument_names_what_the_installed_release_takes():
    model = tiny_model("llama")
    name = model_cache_argument(model)
    assert name in ("cache", "past_key_values")
    with torch.inference_mode():
        out = model(_ids(model), use_cache=True)
        step = model(_ids(model, 1), use_cache=True, **{name: output_cache(out)})
    assert output_cache(step).get_seq_length() == 49
