#!/usr/bin/env bash
# Issue 30 at full scale: does a schedule keep the answers on both prompt families (the RULER/QA generators and
# the LongBench-format one), per task, at 4K and 8K, against the full model and the best peer, with TTFT measured
# side by side on real text? One command; every step resumes where it stopped (rerun the same line).
#
#   bash benchmarks/transfer_suite.sh                      # Qwen2.5-Coder-0.5B at 4K, 30 samples per task
#   MODEL=qwen2.5-coder-1.5b LENGTH=8192 SAMPLES=20 bash benchmarks/transfer_suite.sh
#
# MODEL, LENGTH, SAMPLES (per task), SEED (evaluation seed; the tuner draws from 1000000 + its own seed),
# METHODS (spts eval --methods), R (results folder). On a GPU, spts picks it; CPU cost: docs/tuning.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap
MODEL=${MODEL:-qwen2.5-coder-0.5b}
LENGTH=${LENGTH:-4096}
SAMPLES=${SAMPLES:-30}
SEED=${SEED:-2}
R=${R:-benchmarks/results}
short=${MODEL#qwen2.5-coder-}
tuned=$R/tune_${MODEL}_4096/tuned.json
METHODS=${METHODS:-full,tuned=$tuned,fastkv@0.2:L13}
eval_dir=$R/transfer_eval_qwen${short}_${LENGTH}
bench_dir=$R/transfer_bench_qwen${short}_${LENGTH}

spts eval --model "$MODEL" --tasks lbf,qa,niah_single,niah_multikey --lengths "$LENGTH" --samples "$SAMPLES" \
  --methods "$METHODS" --seed "$SEED" --ltp --reuse-prefix --out "$eval_dir"
# TTFT of the same methods side by side on a real-text prompt (peers included), medians after warm-up.
spts bench --model "$MODEL" --no-random-weights --ltp --text --lengths "$LENGTH" --no-decode \
  --methods "$METHODS" --out "$bench_dir"
python benchmarks/transfer_table.py --out "$R/transfer_qwen${short}_${LENGTH}" \
  --run "$MODEL@$LENGTH=$eval_dir:$bench_dir" --against tuned
