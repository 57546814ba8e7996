"""With budgets at least the prompt length, SPTS must reproduce the unmodified transformers model."""

from __future__ import annotations

import pytest
import torch

import spts
from conftest import ATTENTION, FAMILIES, tiny_model
from spts import SPTSConfig
from spts.runtime.transformers_api import output_cache

UNLIMITED = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(4096, 4096, 4096), delta=0)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_unlimited_budget_matches_unmodified_model(family, attn):
    model = tiny_model(family, attn)
    ids = torch.randint(0, model.config.vocab_size, (1, 57), generator=torch.Generator().manual_seed(1))
    reference = model(ids, use_cache=True)
    reference_tokens = model.generate(ids, max_new_tokens=8, do_sample=False)

    spts.enable(model, UNLIMITED)
    out = model(ids, use_cache=True)
    stats = spts.last_stats(model)
    # The skipping path really ran (not the stock layer forward) in every layer from start_layer.
    assert [layer.stage for layer in stats.layers] == [None, 0, 0, 1, 1, 2]
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=1e-5)
    for layer_ref, layer_out in zip(output_cache(reference).layers, output_cache(out).layers, strict=True):
        torch.testing.assert_close(layer_out.keys, layer_ref.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer_out.values, layer_ref.values, rtol=0, atol=1e-5)
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), reference_tokens)

    spts.disable(model)
    assert not spts.is_enabled(model)
    assert torch.equal(model(ids).logits, reference.logits)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)


@pytest.mark.parametrize(
    "config",
    [
        UNLIMITED.with_(probe_tokens=4),
        UNLIMITED.with_(skip_attention=False),
        UNLIMITED.with_(skip_ffn=False, prune=False),
        UNLIMITED.with_(budgets=(1.0, 1.0, 1.0), delta=0.5),
        UNLIMITED.with_(stage_boundaries=(3,), budgets=(4096, 4096), end_layer=5),
    ],
    ids=["probe4", "no-pap", "no-ffn-no-msdp", "fractions", "end-layer"],
)
def test_unlimited_budget_matches_for_every_switch(config):
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 33), generator=torch.Generator().manual_seed(2))
    reference = model(ids).logits
    with spts.enabled(model, config):
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=1e-5)


def test_unlimited_budget_matches_for_equal_length_batch():
    model = tiny_model("qwen2")
    ids = torch.randint(0, model.config.vocab_size, (3, 29), generator=torch.Generator().manual_seed(3))
    reference = model(ids).logits
    reference_tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    with spts.enabled(model, UNLIMITED):
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=1e-5)
        tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert torch.equal(tokens, reference_tokens)


def test_enable_twice_replaces_config_and_disable_restores_foreign_forward():
    model = tiny_model("llama")
    layer = model.model.layers[2]
    calls = []
    original = layer.forward

    def foreign_forward(*args, **kwargs):  # what accelerate's device hook would install
        calls.append(1)
        return original(*args, **kwargs)

    layer.forward = foreign_forward
    spts.enable(model, UNLIMITED)
    spts.enable(model, UNLIMITED.with_(start_layer=2))
    assert spts.is_enabled(model)
    spts.disable(model)
    assert layer.__dict__["forward"] is foreign_forward
    assert all("forward" not in model.model.layers[i].__dict__ for i in (1, 3, 4, 5))
    model(torch.zeros(1, 4, dtype=torch.long))
    assert calls == [1]


def test_enabled_block_restores_the_previous_setup():
    model = tiny_model("llama")
    spts.enable(model, UNLIMITED)
    with spts.enabled(model, UNLIMITED.with_(start_layer=2)):
        assert model.__dict__["_spts_runtime"].config.start_layer == 2
    assert spts.is_enabled(model) and model.__dict__["_spts_runtime"].config.start_layer == 1
    model(torch.zeros(1, 4, dtype=torch.long))
    assert [layer.stage for layer in spts.last_stats(model).layers] == [None, 0, 0, 1, 1, 2]
    spts.disable(model)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
