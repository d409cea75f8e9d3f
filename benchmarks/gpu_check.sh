#!/usr/bin/env bash
# Every GPU measurement of the speed issue in one call (10 minutes at most), for a session
# that is lent a device. Results land in $OUT (the device tool's folder) or ./gpu_out.
#
# Prepare here (no device time), from the repo root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_shared/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl spandrel==0.4.2
#   mkdir -p .gpu_shared/data/sr .gpu_shared/data/train .gpu_shared/weights
#   cp -r ../shared/data/sr/Set5 .gpu_shared/data/sr/
#   cp -r ../shared/data/train/SunHays80_color_subset20 .gpu_shared/data/train/
#   cp -r ../shared/weights/DCTLSA ../shared/weights/IMDN .gpu_shared/weights/
# Then one device call: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_shared"],
# timeout_s=600), and copy the tables into docs/benchmarks.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MCIR_SHARED="$PWD/.gpu_shared"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"
stage() { echo "== $1 ($(date +%T))"; }

stage "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, spandrel; print('torch', torch.__version__, 'spandrel', spandrel.__version__)"

stage "CUDA tests (vmap vs loop on CUDA, autocast gap, retrain defaults)"
timeout 100 python3 -m pytest -q -s tests/e2e/test_cuda.py tests/metrics/test_basicsr.py -k "cuda" 2>&1 | tee "$OUT/tests.txt" | tail -25

stage "bf16 and TF32 negatives: rounding against the signal on CUDA (why --amp auto is fp32 with TF32 off)"
timeout 30 python3 benchmarks/negatives_precision.py --device cuda --steps 100 \
    --checkpoint "$MCIR_SHARED/weights/IMDN/IMDN_x4.pth" --data "$MCIR_SHARED/data/train/SunHays80_color_subset20" \
    2>&1 | tee "$OUT/negatives_precision.txt" | tail -8

stage "step overhead, batch 32 x 64 (eager; mcir's default precision)"
timeout 100 python3 benchmarks/step_overhead.py --device cuda --batch 32 --patch 64 --json "$OUT/step_32x64.json" 2>&1 | tail -30
stage "step overhead, batch 8 x 48 (eager)"
timeout 60 python3 benchmarks/step_overhead.py --device cuda --batch 8 --patch 48 --steps 10 --json "$OUT/step_8x48.json" 2>&1 | tail -30
stage "step overhead, batch 32 x 64, --amp bf16 (the target in bf16 too)"
timeout 70 python3 benchmarks/step_overhead.py --device cuda --batch 32 --patch 64 --amp bf16 --steps 10 --json "$OUT/step_32x64_bf16.json" 2>&1 | tail -30

stage "input pipeline against the measured mcir plain step"
STEP_MS=$(python3 -c "import json; print(json.load(open('$OUT/step_32x64.json'))['results']['mcir_plain']['ms'])" 2>/dev/null || echo 55)
timeout 40 python3 benchmarks/input_pipeline.py --batch 32 --patch 64 --step-ms "$STEP_MS" --workers 0 4 \
    --data "$MCIR_SHARED/data/train/SunHays80_color_subset20" --json "$OUT/input_pipeline.json" 2>&1 | tail -15

stage "step overhead, batch 32 x 64, torch.compile (compile time reported; may hit its limit)"
timeout 170 python3 benchmarks/step_overhead.py --device cuda --batch 32 --patch 64 --compile --steps 10 --warmup 2 \
    --json "$OUT/step_32x64_compile.json" 2>&1 | tail -30
stage "done"
