"""Timing: intervals that never stall the GPU inside the layer loop (:class:`IntervalTimer`), and callables
measured side by side, interleaved repeats after warm-up, medians (:func:`time_calls`).

On CUDA, intervals are pairs of events and are only resolved (one sync) when read; on CPU the
work is synchronous and ``perf_counter`` is exact enough.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Timing:
    """Seconds of each repeat of one measured call."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Max minus min: how much repeats disagree."""
        return max(self.seconds) - min(self.seconds)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time each call ``repeats`` times, interleaved so drift (thermal, other load) hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            seconds[name].append(_time_once(fn, device))
    return {name: Timing(tuple(values)) for name, values in seconds.items()}
