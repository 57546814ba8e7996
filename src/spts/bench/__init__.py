"""Benchmarks: side-by-side, warm, median measurements of the full model vs SPTS (CUDA events on GPU)."""

from spts.bench.harness import SHAPES, BenchRow, ablations, random_model, run_bench, write_reports
from spts.bench.timing import Timing, time_calls

__all__ = ["SHAPES", "BenchRow", "Timing", "ablations", "random_model", "run_bench", "time_calls", "write_reports"]
