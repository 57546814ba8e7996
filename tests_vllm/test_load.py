"""`vllm serve` with SPTS under concurrent load: mixed lengths, decodes in flight, a client that goes away, bad
requests. Every complete request gets the tokens it gets alone, the bad ones a clear 4xx, none is lost, the server
stays up and exits cleanly. Loopback only; 13 requests, each bounded in time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil

from conftest import hf_greedy, smollm2_path
from spts.data.haystack import build_needle_prompt
from spts.integrations.vllm.load import ChatRequest, Server, get, metric, run_load, stream_chat

WINDOW = 2048  # --max-model-len: small, so the load stays a few minutes on a 2-core CPU
NEW = 16
MIN_PROMPT = 512  # SPTS's threshold for this deployment: prompts below it take vLLM's stock path
TIMEOUT = 300  # seconds any one request may take


def _messages(tokenizer, tokens: int, seed: int) -> tuple[list[dict], int]:
    """Chat messages whose rendered prompt has at most ``tokens`` tokens (and close to it), and that count."""

    def count(messages) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    target = tokens
    for _ in range(3):  # the haystack builder measures its own way: aim lower until the server's count fits
        messages = list(build_needle_prompt(tokenizer, target, depth=0.5, seed=seed, answer_prefix=False).messages)
        n = count(messages)
        if n <= tokens:
            return messages, n
        target -= n - tokens
    raise AssertionError(f"no prompt of at most {tokens} tokens")


def _chat(messages: list[dict], max_tokens: int = NEW) -> dict:
    return {"model": "smollm2", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def test_concurrent_streaming_requests_lose_nothing_and_match_their_solo_tokens(tmp_path):
    from transformers import AutoTokenizer

    model = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model)
    short = [{"role": "user", "content": "Name three colours."}]
    sizes = {"r300": 300, "r450": 450, "r700": 700, "r1000": 1000, "r1400": 1400, "r1800": 1800, "edge": WINDOW - NEW}
    prompts = {"short": (short, None)} | {name: _messages(tokenizer, n, i) for i, (name, n) in enumerate(sizes.items())}
    edge = prompts["edge"][1]
    assert WINDOW - NEW - 64 <= edge <= WINDOW - NEW, edge  # at the window's edge: prompt + new tokens fill it
    long_prompt, long_tokens = _messages(tokenizer, WINDOW + 200, 9)
    assert long_tokens > WINDOW
    leaving, _ = _messages(tokenizer, 400, 10)
    # Early requests are decoding when the long ones arrive; the leaving client would run ~1600 tokens if not
    # aborted; the bad ones arrive mid-load.
    delays = {
        "short": 0.0,
        "r300": 0.0,
        "r450": 0.0,
        "r700": 0.0,
        "r1000": 1.0,
        "r1400": 1.0,
        "r1800": 2.0,
        "edge": 2.0,
    }
    complete = [ChatRequest(name, _chat(prompts[name][0]), delay_s=delays[name]) for name in prompts]
    bad = [
        ChatRequest("leaves", _chat(leaving, max_tokens=WINDOW - 450), disconnect_after=3, delay_s=0.5),
        ChatRequest(
            "malformed", raw=b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}', delay_s=0.5
        ),
        ChatRequest("negative", {"model": "smollm2", "messages": short, "max_tokens": -5}, delay_s=1.5),
        ChatRequest("overlong", _chat(long_prompt), delay_s=1.0),
        ChatRequest("unknown model", {**_chat(short), "model": "gpt-9"}, delay_s=1.5),
    ]
    spts = {"spts": {"preset": "smollm2-135m", "min_prompt_tokens": MIN_PROMPT}}
    arguments = ["--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager", "--seed", "0",
                 "--max-model-len", str(WINDOW), "--max-num-batched-tokens", str(WINDOW), "--no-enable-chunked-prefill",
                 "--no-enable-prefix-caching", "--additional-config", json.dumps(spts)]  # fmt: skip
    vllm = Path(sys.executable).parent / "vllm"
    started = time.monotonic()
    with Server(vllm, model, arguments, tmp_path / "server.log") as server:
        children = psutil.Process(server.process.pid).children(recursive=True)
        loaded = time.monotonic()
        results = {r.name: r for r in run_load(server.port, complete + bad, timeout=TIMEOUT)}
        under_load = time.monotonic() - loaded

        # None is lost: every complete request streamed all its tokens to the end, with the prompt it was sent.
        for name, (_, tokens) in prompts.items():
            result = results[name]
            assert result.complete and result.status == 200, (name, result)
            assert result.finish_reason == "length" and len(result.token_ids) == NEW, (name, result)
            if tokens is not None:
                assert result.prompt_tokens == tokens, (name, result.prompt_tokens, tokens)
        assert results["leaves"].disconnected and len(results["leaves"].token_ids) >= 3
        for name, words in (("malformed", "JSON"), ("negative", "max_tokens"), ("overlong", "context length"),
                            ("unknown model", "gpt-9")):  # fmt: skip
            result = results[name]
            assert result.status is not None and 400 <= result.status < 500, (name, result)
            assert words in result.error, (name, result.error)
        # The client that left was aborted, not generated for to the end: nothing runs or waits any more.
        deadline = time.monotonic() + 30
        while metric(server.port, "vllm:num_requests_running") + metric(server.port, "vllm:num_requests_waiting"):
            assert time.monotonic() < deadline, "a request is still running after every client finished or left"
            time.sleep(1)

        # Each complete request alone gets the tokens it got under load (greedy).
        for request in complete:
            alone = stream_chat(server.port, request, timeout=TIMEOUT)
            assert alone.complete and alone.token_ids == results[request.name].token_ids, request.name
        assert get(server.port, "/health")[0] == 200
        code = server.stop()
    assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"processes left after shutdown: {alive}"
    log = (tmp_path / "server.log").read_text()
    assert "SPTS prefill on: SPTSConfig(start_layer=17" in log and "prompts of at least 512 tokens" in log
    # The long prompts really skipped under load: the HF runtime with the same schedule gives their tokens, which
    # are not the full model's.
    from spts import SPTSConfig

    differs = []
    for name in ("r700", "r1000"):
        text = tokenizer.apply_chat_template(prompts[name][0], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert hf_greedy(model, ids, NEW, SPTSConfig.preset("smollm2-135m")) == results[name].token_ids, name
        differs.append(hf_greedy(model, ids, NEW) != results[name].token_ids)
    assert any(differs), "SPTS's tokens equal the full model's on every prompt: the check cannot tell them apart"
    print(f"load test: {under_load:.0f} s under load, {time.monotonic() - started:.0f} s in all")
