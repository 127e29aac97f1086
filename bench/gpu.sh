#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests that skip on CPU machines, then the
# GPU rows of bench/model.py (forward + backward of the benchmark models, fp32 and bf16 autocast).
#
# Usage (repository root, flairkit and its dependencies importable, e.g. PYTHONPATH=src):
#     bash bench/gpu.sh [OUTDIR]
# OUTDIR (default build/gpu) receives pytest.log and one JSON line per bench row set.
set -uo pipefail
out=${1:-build/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

status=0
# -rs lists the skips: a GPU test that still skips here is a failure of this script's purpose.
python3 -m pytest -q -rs -p no:cacheprovider tests/training/test_precision.py tests/inference/test_zonal.py 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
if grep -q "SKIPPED.*needs CUDA" "$out/pytest.log"; then
    echo "gpu.sh: a CUDA test was skipped on a machine with CUDA" >&2
    status=1
fi

for precision in 32 bf16; do
    python3 bench/model.py --device cuda --precision "$precision" --batch 8 --steps 5 | tee "$out/model_cuda_$precision.json"
done
exit "$status"
