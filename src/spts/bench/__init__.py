"""Timing: side-by-side, warm, median measurements (CUDA events on GPU)."""

from spts.bench.timing import Timing, time_calls

__all__ = ["Timing", "time_calls"]
