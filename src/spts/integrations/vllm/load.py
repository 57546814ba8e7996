"""A vLLM OpenAI-compatible server on loopback, and concurrent streaming chat requests against it.

For the server load test (``tests_vllm/test_load.py``) and ``benchmarks/vllm_load.py``: :class:`Server` starts
``vllm serve`` on 127.0.0.1 and stops it with SIGINT (what Ctrl-C does), reporting the exit code;
:func:`run_load` sends :class:`ChatRequest` s from threads, each at its own offset from a common start, and
records what came back for each (status, streamed token ids, first-token time, how it ended). Standard library
only, nothing from vLLM: the client side runs in any interpreter.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ChatRequest:
    """One streaming chat completion to send.

    ``body`` is the JSON request (``stream``, ``return_token_ids`` and usage reporting are added), or ``raw`` the
    exact bytes to post instead (a malformed request). ``disconnect_after``: close the connection after that many
    streamed tokens, as a client that goes away mid-stream. ``delay_s``: when to send, after the load starts."""

    name: str
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    disconnect_after: int | None = None
    delay_s: float = 0.0


@dataclass
class ChatResult:
    """What one request got back."""

    name: str
    status: int | None = None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    done: bool = False  # the stream ended with "data: [DONE]"
    prompt_tokens: int | None = None
    error: str | None = None  # the error body (status >= 400) or the client's exception
    disconnected: bool = False
    sent_at: float = 0.0
    first_token_s: float | None = None  # from sending to the first streamed token
    end_s: float | None = None  # from sending to the end of the stream

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.done and self.finish_reason is not None and not self.disconnected


def stream_chat(port: int, request: ChatRequest, timeout: float = 600.0) -> ChatResult:
    """Send one request to ``/v1/chat/completions`` and read its stream (or its error) to the end."""
    result = ChatResult(request.name)
    if request.raw is not None:
        payload = request.raw
    else:
        body = {**(request.body or {}), "stream": True, "return_token_ids": True}
        body["stream_options"] = {"include_usage": True}
        payload = json.dumps(body).encode()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    result.sent_at = time.perf_counter()
    try:
        connection.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        result.status = response.status
        if response.status != 200:
            result.error = response.read().decode(errors="replace")
            return result
        _read_stream(response, request, result, connection)
    except (OSError, http.client.HTTPException) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return result


def _read_stream(response, request: ChatRequest, result: ChatResult, connection) -> None:
    while True:
        line = response.readline()
        if not line:
            return  # the server closed the stream without [DONE]: result.done stays False
        text = line.decode().strip()
        if not text.startswith("data:"):
            continue
        data = text.removeprefix("data:").strip()
        if data == "[DONE]":
            result.done = True
            result.end_s = time.perf_counter() - result.sent_at
            return
        chunk = json.loads(data)
        if chunk.get("usage"):
            result.prompt_tokens = chunk["usage"].get("prompt_tokens")
        for choice in chunk.get("choices", []):
            tokens = choice.get("token_ids") or []
            if tokens and result.first_token_s is None:
                result.first_token_s = time.perf_counter() - result.sent_at
            result.token_ids.extend(tokens)
            result.finish_reason = choice.get("finish_reason") or result.finish_reason
        if request.disconnect_after is not None and len(result.token_ids) >= request.disconnect_after:
            # Go away mid-stream: the server must notice, abort the request and carry on with the others.
            connection.sock.shutdown(socket.SHUT_RDWR)
            result.disconnected = True
            return


def run_load(port: int, requests: Sequence[ChatRequest], timeout: float = 600.0) -> list[ChatResult]:
    """Send every request from its own thread, each ``delay_s`` after a common start; results in request order."""
    results: list[ChatResult | None] = [None] * len(requests)
    start = time.perf_counter()

    def send(i: int, request: ChatRequest) -> None:
        time.sleep(max(0.0, start + request.delay_s - time.perf_counter()))
        results[i] = stream_chat(port, request, timeout)

    threads = [threading.Thread(target=send, args=(i, r), daemon=True) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    missing = [r.name for r, got in zip(requests, results, strict=True) if got is None]
    if missing:
        raise TimeoutError(f"no answer within {timeout} s to {missing}")
    return [r for r in results if r is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET on the server."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def metric(port: int, name: str) -> float:
    """The sum of a Prometheus metric's samples on ``/metrics`` (e.g. ``vllm:num_requests_running``)."""
    _, text = get(port, "/metrics")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    if not values:
        raise KeyError(f"the server reports no metric {name!r}")
    return sum(values)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit`` in the main thread, so that ``with Server(...)`` stops its server.

    Without a handler SIGTERM ends Python at once (no ``finally`` or ``__exit__`` runs), and the server, in its own
    session, would keep running with the port and the memory. For scripts; tests and other callers keep theirs."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


class Server:
    """``vllm serve`` on loopback: start it, wait until it is healthy, stop it with SIGINT.

    ``arguments`` follow the model path (``--dtype``, ``--max-model-len``, ...); host and port are added. The
    server's output goes to ``log``. Use as a context manager; ``exit_code`` holds how it ended. The server is
    stopped whenever the block exits, normally or through an exception (not on a bare SIGTERM: a script that can be
    terminated calls :func:`exit_on_sigterm` first)."""

    def __init__(self, vllm: Path, model: Path, arguments: Sequence[str], log: Path, start_timeout: float = 600.0):
        self.port = free_port()
        self.log = log
        self.command = [str(vllm), "serve", str(model), "--host", HOST, "--port", str(self.port), *arguments]
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> Server:
        with self.log.open("w") as out:
            # Its own session, so that a failed test can kill the whole process group (engine core included).
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited during start-up; its output: {self.log}")
            try:
                if get(self.port, "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"no healthy server on port {self.port} after {self.start_timeout} s; output: {self.log}")

    def stop(self, timeout: float = 120.0) -> int:
        """SIGINT, then wait for the exit code (killing the group if it does not come)."""
        if self.process is None or self.exit_code is not None:
            return self.exit_code if self.exit_code is not None else -1
        self.process.send_signal(signal.SIGINT)
        try:
            self.exit_code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.exit_code = self.process.wait()
        return self.exit_code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        self.stop()
