"""SPTSConfig: validation, presets, derived configs, and the per-prompt schedule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spts import PRESETS, SPTSConfig
from spts.config import PRESET_SHAPES
from spts.policies import plan_layers


def test_presets_match_the_paper():
    llama = SPTSConfig.preset("llama-3.1-8b")
    assert (llama.start_layer, llama.stage_boundaries) == (10, (13, 18, 23, 28))
    assert llama.budgets == (9216, 7168, 4096, 2048) and llama.delta == 1024
    qwen = SPTSConfig.preset("qwen2.5-7b")
    assert (qwen.start_layer, qwen.stage_boundaries, qwen.delta) == (9, (12, 16, 20, 24), 2048)
    assert qwen.budgets == (13312, 10240, 7168, 4096)
    pangu = SPTSConfig.preset("openpangu-1b")
    assert (pangu.start_layer, pangu.stage_boundaries) == (11, (13, 16, 19, 22))
    assert {"llama-3.1-8b", "qwen2.5-7b", "openpangu-1b"} <= set(PRESETS)
    for preset in PRESETS.values():
        preset.validate_for(PRESET_SHAPES[preset.name][0])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"llama-3\.1-8b"):
        SPTSConfig.preset("gpt-5")


def test_last_budget_covers_final_stage():
    llama = SPTSConfig.preset("llama-3.1-8b")
    assert llama.stage_of_layer(9) is None
    assert [llama.stage_of_layer(i) for i in (10, 12, 13, 27, 28, 31)] == [0, 0, 1, 3, 4, 4]
    assert llama.stage_budget(4, 100_000) == llama.stage_budget(3, 100_000) == 2048
    assert llama.pruning_keep(1, 100_000) == 7168 + 1024


def test_fraction_budgets_scale_with_prompt():
    config = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.1)
    assert config.stage_budget(0, 1000) == 500
    assert config.stage_budget(1, 1001) == 251  # rounded up
    assert config.pruning_keep(1, 1000) == 350
    assert config.stage_budget(1, 1) == 1


class _FakeConfig:
    def __init__(self, layers, context):
        self.num_hidden_layers = layers
        self.max_position_embeddings = context


def test_for_model_keeps_relative_depth_and_scales_budgets():
    same = SPTSConfig.for_model(_FakeConfig(28, 32768))
    qwen = SPTSConfig.preset("qwen2.5-7b")
    assert (same.start_layer, same.stage_boundaries, same.budgets, same.delta) == (
        qwen.start_layer,
        qwen.stage_boundaries,
        qwen.budgets,
        qwen.delta,
    )
    smol = SPTSConfig.for_model(_FakeConfig(30, 8192))
    assert smol.start_layer == 10 and smol.stage_boundaries == (13, 17, 21, 26)
    assert smol.budgets == (3328, 2560, 1792, 1024) and smol.delta == 512
    fractions = SPTSConfig.for_model(_FakeConfig(24, 32768), reference="smollm2-135m")
    assert fractions.start_layer == 14 and fractions.stage_boundaries == (16, 18, 21)
    assert fractions.budgets == (0.3, 0.2, 0.1, 0.05) and fractions.delta == 0.03 and fractions.pool_kernel == 13
    tiny = SPTSConfig.for_model(_FakeConfig(4, 512))
    tiny.validate_for(4)
    assert tiny.start_layer >= 1 and all(b < 4 for b in tiny.stage_boundaries)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start_layer": 0}, "start_layer must be >= 1"),
        ({"start_layer": 2.0}, "start_layer must be an int"),
        ({"stage_boundaries": (5, 5)}, "strictly increasing"),
        ({"stage_boundaries": (2, 6)}, r"stage_boundaries\[0\] must be >= 4"),
        ({"budgets": (10,)}, "one entry per stage"),
        ({"budgets": (10, 0, 5)}, r"budgets\[1\]=0 as a token count must be >= 1"),
        ({"budgets": (10, -3, 5)}, r"budgets\[1\]"),
        ({"budgets": (10, 1.5, 5)}, r"budgets\[1\]=1.5 as a fraction of the prompt must be in \(0, 1\]"),
        ({"budgets": (10, "all", 5)}, r"budgets\[1\] must be an int"),
        ({"delta": -1}, "delta=-1"),
        ({"probe_tokens": 0}, "probe_tokens must be >= 1"),
        ({"pool_kernel": 4}, "pool_kernel must be odd"),
        ({"pool_kernel": 0}, "pool_kernel must be >= 1"),
        ({"prune": "yes"}, "prune must be a bool"),
    ],
)
def test_invalid_fields_name_the_field_and_range(changes, message):
    base = dict(start_layer=3, stage_boundaries=(5, 7), budgets=(10, 8, 5))
    with pytest.raises(ValueError, match=message):
        SPTSConfig(**{**base, **changes})


def test_validate_for_model_layer_count():
    config = SPTSConfig.preset("llama-3.1-8b")
    config.validate_for(32)
    with pytest.raises(ValueError, match=r"stage_boundaries\[3\]=28 must be less than the model's 24 layers"):
        config.validate_for(24)
    with pytest.raises(ValueError, match="start_layer=10 must be less than the model's 8 layers"):
        config.validate_for(8)


def test_plan_prunes_only_when_it_drops_tokens():
    config = SPTSConfig(start_layer=2, stage_boundaries=(4, 6), budgets=(100, 50, 20), delta=10)
    plans = plan_layers(config, num_layers=8, prompt_length=80)
    assert plans[4].prune_to == 60 and plans[6].prune_to == 30 and plans[2].prune_to is None
    assert [plans[i].budget for i in range(2, 8)] == [80, 80, 50, 50, 20, 20]
    assert [plans[i].scores_needed_next for i in range(2, 8)] == [False, True, False, True, False, False]
    short = plan_layers(config, num_layers=8, prompt_length=25)
    assert all(plan.prune_to is None for plan in short.values())
    assert all(p.prune_to is None for p in plan_layers(config.with_(prune=False), 8, 80).values())


@given(
    length=st.integers(1, 5000),
    budgets=st.lists(st.integers(1, 4000), min_size=3, max_size=3),
    delta=st.integers(0, 500),
)
def test_plan_candidates_never_grow_and_budgets_fit(length, budgets, delta):
    config = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=tuple(budgets), delta=delta)
    plans = plan_layers(config, num_layers=8, prompt_length=length)
    counts = [plans[i].candidates for i in range(1, 8)]
    assert counts == sorted(counts, reverse=True) and counts[0] == length
    assert all(1 <= plans[i].budget <= plans[i].candidates for i in range(1, 8))


def test_end_layer_is_checked_against_the_schedule_and_the_model():
    with pytest.raises(ValueError, match="end_layer must be >= 3"):
        SPTSConfig(start_layer=2, stage_boundaries=(), budgets=(8,), end_layer=2)
    with pytest.raises(ValueError, match="before end_layer=4"):
        SPTSConfig(start_layer=1, stage_boundaries=(4,), budgets=(8, 4), end_layer=4)
    config = SPTSConfig(start_layer=1, stage_boundaries=(3,), budgets=(8, 4), end_layer=5)
    assert config.skipping_layers(6) == range(1, 5)
    assert config.stage_of_layer(5) is None and config.stage_of_layer(4) == 1
    with pytest.raises(ValueError, match="end_layer=5 must be at most the model's 4 layers"):
        config.validate_for(4)
