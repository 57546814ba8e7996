#!/usr/bin/env bash
# One device call's worth of GPU work for issue 5: check the static decoder on the GPU (fp32, exact
# tokens expected), then time a real shape with random bf16 weights: decode paths vs the memory floor,
# and `spts bench` (TTFT, E2E 16/128, decode, memory) over prompt lengths. Writes at most 8 files
# under $OUT (the device tool's limit). The GPU machine has torch and transformers but no gguf, so the
# package runs from src/ without installing.
#
#   OUT=runs/gpu bash benchmarks/gpu_suite.sh                         # LLaMA-3.1-8B shape, 8K-32K
#   SHAPE=qwen2.5-7b LENGTHS=32768,65536 OUT=runs/gpu bash benchmarks/gpu_suite.sh
#   PART=sparse OUT=runs/gpu bash benchmarks/gpu_suite.sh      # issue 31: block-sparse attention, 32K-128K
set -euo pipefail
if [ "${PART:-decode}" = sparse ]; then
    exec bash benchmarks/gpu_sparse.sh
fi
OUT=${OUT:?set OUT to the output folder}
SHAPE=${SHAPE:-llama-3.1-8b}
LENGTHS=${LENGTHS:-8192,16384,32768}
CHECK_LENGTH=${CHECK_LENGTH:-32768}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
preset=$(python -c "import spts, sys; print(sys.argv[1] if sys.argv[1] in spts.PRESETS else '')" "$SHAPE")
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT/machine.txt"
python benchmarks/decode_check.py --shape smollm2-135m --dtype float32 --length 4096 --out "$OUT/check_fp32"
python benchmarks/decode_check.py --shape "$SHAPE" --length "$CHECK_LENGTH" ${preset:+--preset "$preset"} \
    --out "$OUT/check_$SHAPE"
python -c "from spts.cli import app; app()" bench --model "$SHAPE" --lengths "$LENGTHS" --repeats 3 \
    --out "$OUT/bench_$SHAPE"
rm -f "$OUT/bench_$SHAPE/rows.jsonl"  # summary.json holds the same rows; keeps the file count within 8
cat "$OUT"/check_*/decode_check.json
cat "$OUT/bench_$SHAPE/table.md"
