"""The real SmolLM2-135M with its preset (fp32): vLLM+SPTS against the HF runtime, the demo's needle, mixed batches.

One vLLM+SPTS engine for the whole module. Prompts are token ids from the zoo's tokenizer.
"""

from __future__ import annotations

import pytest

from conftest import greedy, hf_greedy, report, smollm2_path, start_engine
from spts.data.haystack import build_needle_prompt, prompt_input_ids

MAX_LEN = 8192
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model_path():
    return smollm2_path()


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, local_files_only=True)


@pytest.fixture(scope="module")
def llm(model_path, engines):
    # The engine core in this process: requests submitted together then reach the scheduler before its next step,
    # so a batch is one step. In its own process the core may start a step with the first request alone, and the
    # batch tests below would test nothing on a fast machine.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engines["spts"] = start_engine(model_path, MAX_LEN, {"preset": "smollm2-135m"})
    return engines["spts"]


@pytest.fixture(scope="module")
def needle(tokenizer):
    prompt = build_needle_prompt(tokenizer, 6000, depth=0.5, seed=0)  # the demo's prompt (spts.demo.run_demo)
    return prompt, prompt_input_ids(tokenizer, prompt)[0].tolist()


def _prompts(tokenizer, lengths: list[int]) -> list[list[int]]:
    """Needle prompts of about the given lengths, with different needles (seeds)."""
    return [prompt_input_ids(tokenizer, build_needle_prompt(tokenizer, n, seed=i + 1))[0].tolist() for i, n in
            enumerate(lengths)]  # fmt: skip


def test_the_demos_needle_is_answered_with_the_hf_runtimes_tokens(llm, model_path, tokenizer, needle):
    prompt, ids = needle
    ours = greedy(llm, [ids], NEW_TOKENS)[0]
    kv = report(llm)["last"][0]["kv_tokens"]
    assert kv[17] == -(-3 * len(ids) // 10) and kv[29] < len(ids) // 10  # the preset really skipped and pruned
    answer = tokenizer.decode(ours, skip_special_tokens=True)
    assert prompt.is_correct(answer), answer
    assert ours == hf_greedy(model_path, ids, NEW_TOKENS, "smollm2-135m")


def test_prefills_of_different_lengths_in_one_batch_get_their_own_tokens(llm, tokenizer):
    prompts = [*_prompts(tokenizer, [3000, 1500]), _prompts(tokenizer, [300])[0][:200]]  # 200: below the threshold
    alone = [greedy(llm, [p], NEW_TOKENS)[0] for p in prompts]
    together = greedy(llm, prompts, NEW_TOKENS)
    last = report(llm)["last"]
    assert sorted(r["prompt_length"] for r in last) == sorted(len(p) for p in prompts[:2])  # one step, two skipped
    assert together == alone


def test_a_long_prefill_joining_running_decodes_leaves_them_unchanged(llm, tokenizer):
    from vllm import SamplingParams

    short, medium, long = _prompts(tokenizer, [300, 1500, 4000])
    short = short[:200]
    alone = {name: greedy(llm, [p], NEW_TOKENS)[0] for name, p in (("short", short), ("medium", medium),
                                                                    ("long", long))}  # fmt: skip
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    engine.add_request("short", {"prompt_token_ids": short}, params)
    engine.add_request("medium", {"prompt_token_ids": medium}, params)  # SPTS prefill, then decodes
    tokens: dict[str, list[int]] = {}
    for _ in range(3):  # prefill both, then two decode steps: the medium request now decodes from its compressed cache
        engine.step()
    engine.add_request("long", {"prompt_token_ids": long}, params)
    joined = False
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = list(output.outputs[0].token_ids)
            elif output.request_id == "long":
                joined = True
    assert joined and report(llm)["last"][0]["prompt_length"] == len(long)
    assert tokens == alone
