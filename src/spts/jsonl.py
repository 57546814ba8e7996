"""Results files of resumable jobs (eval, tune, studies): one JSON object per line, appended as work finishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL results file; a last line cut short by an interruption is dropped from the file, so the
    job that resumes it appends after the last whole row."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        path.write_bytes(complete)
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
