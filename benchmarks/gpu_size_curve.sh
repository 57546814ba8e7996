#!/usr/bin/env bash
# Issue 16 item 3 on a lent GPU: benchmarks/size_curve.sh (tune, eval --reuse-prefix, bench per Qwen2.5-Coder
# size) on a machine that cannot reach a package index. The zoo's GGUFs travel as files: $SPTS_GGUF_DIR holds
# them under their catalogue names (their sha256 is checked on conversion), and a carried gguf wheel in .whl/
# is installed first (the device image has no `gguf`). Results go to $RUNS (kept between calls on a warm
# machine, so a killed call resumes) and a tarball of them to $OUT.
#
#   SPTS_GGUF_DIR=/root/gguf MODELS=qwen2.5-coder-0.5b SAMPLES=50 OUT=$OUT bash benchmarks/gpu_size_curve.sh
#
# How the 0.5 GB / 1.1 GB files got there, 57 MiB per device call (the tool's 64 MiB limit), is in
# docs/eval.md ("Size curve on a lent GPU").
set -euo pipefail
OUT=${OUT:?set OUT to the output folder}
RUNS=${RUNS:-/root/runs}
export SPTS_GGUF_DIR=${SPTS_GGUF_DIR:-/root/gguf}
export SPTS_CACHE_DIR=${SPTS_CACHE_DIR:-/root/spts-cache}
export SAMPLES=${SAMPLES:-50}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" > /dev/null && ! python3 -c "import gguf" 2> /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PYTHONPATH
bin=$(mktemp -d)
printf '#!/bin/sh\nexec python3 -c "from spts.cli import app; app()" "$@"\n' > "$bin/spts"
chmod +x "$bin/spts"
export PATH=$bin:$PATH
mkdir -p "$RUNS" "$OUT"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >> "$RUNS/machine.txt"
status=0
OUT=$RUNS PYTHONUNBUFFERED=1 bash benchmarks/size_curve.sh || status=$?
tar -czf "$OUT/size_runs.tgz" -C "$RUNS" .
exit $status
