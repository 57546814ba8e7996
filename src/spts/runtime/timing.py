"""Interval timing that never stalls the GPU inside the layer loop.

On CUDA, intervals are pairs of events and are only resolved (one sync) when read; on CPU the
work is synchronous and ``perf_counter`` is exact enough.
"""

from __future__ import annotations

import time

import torch


class IntervalTimer:
    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._open: object | None = None
        self._intervals: list[tuple[object, object]] = []

    def _mark(self) -> object:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._open = self._mark()

    def stop(self) -> None:
        if self._open is not None:
            self._intervals.append((self._open, self._mark()))
            self._open = None

    def seconds(self) -> float:
        if not self._intervals:
            return 0.0
        if self._cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self._intervals) / 1000.0  # type: ignore[attr-defined]
        return sum(b - a for a, b in self._intervals)  # type: ignore[operator]
