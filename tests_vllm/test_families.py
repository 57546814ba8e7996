"""vLLM+SPTS against stock vLLM and against the HF runtime, on a tiny random model of each family.

Per family two engines: stock vLLM and vLLM+SPTS with a real schedule (``TINY_SPTS``). A 40-token prompt is below
every budget (SPTS's path runs every token: it must give stock vLLM's tokens); a 400-token prompt skips and prunes
(it must give the HF runtime's tokens for the same config, decoding included, i.e. from the compressed cache).
"""

from __future__ import annotations

import random

import pytest

from conftest import TINY_MIN_PROMPT, TINY_SPTS, greedy, hf_greedy, report, save_tiny_model, start_engine
from spts.config import SPTSConfig

FAMILIES = ("llama", "qwen2", "qwen3")
MAX_LEN = 1024
NEW_TOKENS = 12


def _prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 256) for _ in range(length)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory, engines):
    name = request.param
    folder = save_tiny_model(name, tmp_path_factory.mktemp(f"tiny-{name}"))
    # One family's engines at a time: stop the previous family's before starting these.
    for key in list(engines):
        from conftest import stop_engine

        stop_engine(engines.pop(key))
    spts = {"config": TINY_SPTS, "min_prompt_tokens": TINY_MIN_PROMPT}
    engines["stock"] = start_engine(folder, MAX_LEN, skip_tokenizer_init=True)
    engines["spts"] = start_engine(folder, MAX_LEN, spts, skip_tokenizer_init=True)
    return name, folder, engines


def test_budgets_at_least_the_prompt_give_stock_tokens(family):
    _, _, engines = family
    prompts = [_prompt(40, seed) for seed in range(3)]
    stock = greedy(engines["stock"], prompts, NEW_TOKENS)
    spts = [greedy(engines["spts"], [p], NEW_TOKENS)[0] for p in prompts]
    # SPTS's own path ran (every candidate active, every token cached), it did not fall back to stock.
    last = report(engines["spts"])["last"]
    assert last and last[0]["prompt_length"] == 40 and set(last[0]["kv_tokens"].values()) == {40}
    assert spts == stock


def test_real_schedule_gives_the_hf_runtimes_tokens(family):
    _, folder, engines = family
    prompt = _prompt(400, seed=7)
    ours = greedy(engines["spts"], [prompt], NEW_TOKENS)[0]
    kv = report(engines["spts"])["last"][0]["kv_tokens"]
    # The schedule really skipped: layer 2 keeps its 96-token budget, the last stage 48 (after pruning).
    assert kv[2] == 96 and kv[5] == 48
    reference = hf_greedy(folder, prompt, NEW_TOKENS, SPTSConfig(**TINY_SPTS))
    assert ours == reference


def test_short_prompts_take_the_stock_path(family):
    _, _, engines = family
    before = report(engines["spts"])["prefills"]
    prompt = _prompt(TINY_MIN_PROMPT - 1, seed=3)
    assert greedy(engines["spts"], [prompt], NEW_TOKENS) == greedy(engines["stock"], [prompt], NEW_TOKENS)
    assert report(engines["spts"])["prefills"] == before
