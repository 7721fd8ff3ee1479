#!/usr/bin/env bash
# Everything a lent GPU is used for, in one call, most important first (device time is scarce;
# each stage writes its log as it goes, so a run cut short still returns what it finished):
#   1. the CUDA-only tests (graph == eager, training steps with graphs in tf32 and bf16, completion
#      by regions and windows) and the rest of test_accel
#   2. benchmarks/cuda_profile.py: the kernels of a Langevin step per setting, 128 and 512 px,
#      among them the descriptor forms that target the H100 kernel profile
#   3. benchmarks/speed.py on CUDA (phase split, Langevin paths side by side, among them those
#      forms: first layer on 16 channels, replicate padding by copies, both, also in
#      channels-last and bf16; 8192 px sample)
#   4. a default `coopsynth texture` run on CUDA through the CLI, timed
#   5. benchmarks/quality.py --quick on CUDA at the default precision
#   6. benchmarks/cuda_profile.py --compile: the descriptor through torch.compile (at most 100 s)
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
$PY -m pytest -q -p no:cacheprovider tests/test_accel.py tests/test_completion.py -k "cuda or accel" 2>&1 | tee "$OUT/tests.log"

echo "== 2. kernels"
$PY benchmarks/cuda_profile.py --sizes 128,512 --no-write 2>&1 | tee "$OUT/profile.md"

echo "== 3. speed"
$PY benchmarks/speed.py --device cuda --big 8192 --no-write 2>&1 | tee "$OUT/speed.md"

echo "== 4. CLI, default preset, on CUDA"
start=$SECONDS
$PY -m coopsynth texture examples/cork.png -o /tmp/cuda_cli --device cuda --force 2>&1 | tail -25 | tee "$OUT/cli.log"
echo "wall $((SECONDS - start)) s" | tee -a "$OUT/cli.log"
ls /tmp/cuda_cli >> "$OUT/cli.log" 2>&1

echo "== 5. quality at the default precision"
$PY benchmarks/quality.py --quick --methods coopsynth --device cuda \
    --data "$DATA" --out /tmp/cuda_quality --no-write 2>&1 | tee "$OUT/quality.md"
tar czf "$OUT/quality.tgz" -C /tmp/cuda_quality --exclude="*.pt" . 2>/dev/null

echo "== 6. torch.compile"
timeout 100 $PY benchmarks/cuda_profile.py --sizes 512 --compile --no-write 2>&1 | tail -40 | tee "$OUT/compile.md"
