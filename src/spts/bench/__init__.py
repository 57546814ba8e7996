"""Benchmarks: side-by-side, warm, median measurements of the full model vs SPTS (CUDA events on GPU)."""

from spts.bench.harness import SHAPES, BenchRow, ablations, random_model, run_bench
from spts.bench.report import write_reports

__all__ = ["SHAPES", "BenchRow", "ablations", "random_model", "run_bench", "write_reports"]
