"""Where a result was measured: the one line every results file and table starts from."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime


def machine() -> str:
    """Host name, architecture and CPU count, e.g. ``vm x86_64 2 cores``."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores"


def run_context(dtype) -> str:
    """dtype, torch version, machine, torch's thread count and date: the first line of every results table.
    Thread count matters on a CPU: the same machine gives other timings (and speedups) with 1 and 2 threads."""
    import torch

    threads = torch.get_num_threads()
    return (
        f"{str(dtype).removeprefix('torch.')}, torch {torch.__version__}, {machine()}, "
        f"{threads} torch thread{'s' * (threads > 1)}, {datetime.now(UTC):%Y-%m-%d}"
    )
