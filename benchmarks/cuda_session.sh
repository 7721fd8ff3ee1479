#!/usr/bin/env bash
# Everything a lent GPU is used for, in one call (device time is scarce; see RESULTS.md):
#   1. the CUDA-only tests (graph == eager, training steps with graphs in tf32 and bf16)
#   2. benchmarks/speed.py on CUDA (phase split, Langevin paths side by side, 8192 px sample)
#   3. benchmarks/quality.py --quick on CUDA, coopsynth in fp32, tf32 and bf16 side by side
#   4. a default `coopsynth texture` run on CUDA through the CLI, timed
# Usage: bash benchmarks/cuda_session.sh [TEXTURE_DIR]   (logs go to $OUT, default /tmp/cuda_out)
set -u
OUT=${OUT:-/tmp/cuda_out}
DATA=${1:-../shared/data/textures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/gpu.txt"

echo "== 1. CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests/test_accel.py 2>&1 | tee "$OUT/tests.log"

echo "== 2. speed"
$PY benchmarks/speed.py --device cuda --big 8192 --no-write 2>&1 | tee "$OUT/speed.md"

echo "== 3. quality per precision"
$PY benchmarks/quality.py --quick --methods coopsynth --device cuda --precisions fp32,tf32,bf16 \
    --data "$DATA" --out /tmp/cuda_quality --no-write 2>&1 | tee "$OUT/quality.md"
tar czf "$OUT/quality.tgz" -C /tmp/cuda_quality --exclude='*.pt' . 2>/dev/null

echo "== 4. CLI, default preset, on CUDA"
start=$SECONDS
$PY -m coopsynth texture examples/cork.png -o /tmp/cuda_cli --device cuda --force 2>&1 | tail -25 | tee "$OUT/cli.log"
echo "wall $((SECONDS - start)) s" | tee -a "$OUT/cli.log"
ls /tmp/cuda_cli >> "$OUT/cli.log" 2>&1
