"""Measure callables side by side: interleaved repeats after warm-up, medians, CUDA events on GPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


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
