"""The load test's server wrapper (spts.integrations.vllm.load.Server) against a stand-in `vllm` executable.

Standard library only on both sides, so it runs in the main suite: what is checked is process handling, not vLLM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spts.integrations.vllm.load import Server

# Answers /health like `vllm serve`, writes its pid, and exits 0 on SIGINT. Like vLLM (uvicorn), it installs its own
# SIGINT handler: a child of a background job (`cmd &` in a script) starts with SIGINT ignored, and Python then
# installs none.
FAKE_VLLM = """\
#!{python}
import http.server, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
port = int(sys.argv[sys.argv.index("--port") + 1])
with open(os.environ["FAKE_VLLM_PID"], "w") as f:
    f.write(str(os.getpid()))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
try:
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
"""

# Holds a Server open until it is terminated; exit_on_sigterm() decides whether the server goes with it.
HOLDER = """\
import sys, time
from pathlib import Path
from spts.integrations.vllm.load import Server, exit_on_sigterm
if sys.argv[2] == "handler":
    exit_on_sigterm()
with Server(Path(sys.argv[1]), Path("model"), [], Path(sys.argv[3]), start_timeout=60):
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    executable = tmp_path / "vllm"
    executable.write_text(FAKE_VLLM.format(python=sys.executable))
    executable.chmod(0o755)
    monkeypatch.setenv("FAKE_VLLM_PID", str(tmp_path / "server.pid"))
    return executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_server_context_stops_with_sigint_and_reports_exit_code(fake_vllm: Path, tmp_path: Path) -> None:
    with Server(fake_vllm, Path("model"), [], tmp_path / "server.log", start_timeout=60) as server:
        pid = int((tmp_path / "server.pid").read_text())
        assert _alive(pid)
    assert server.exit_code == 0
    assert _wait_gone(pid, 10)


@pytest.mark.parametrize("handler", [True, False], ids=["exit_on_sigterm", "default_sigterm"])
def test_terminated_script_stops_its_server_only_with_exit_on_sigterm(
    fake_vllm: Path, tmp_path: Path, handler: bool
) -> None:
    holder = tmp_path / "holder.py"
    holder.write_text(textwrap.dedent(HOLDER))
    process = subprocess.Popen(
        [sys.executable, str(holder), str(fake_vllm), "handler" if handler else "default", str(tmp_path / "log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        pid = int((tmp_path / "server.pid").read_text())
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        if handler:
            assert code == 128 + signal.SIGTERM
            assert _wait_gone(pid, 30), "the server outlived the terminated script"
        else:
            # Without the handler the server is left behind: the reason exit_on_sigterm exists.
            assert code == -signal.SIGTERM
            assert _alive(pid)
    finally:
        process.kill()
        pid_file = tmp_path / "server.pid"
        if pid_file.exists() and _alive(server_pid := int(pid_file.read_text())):
            os.killpg(server_pid, signal.SIGKILL)
