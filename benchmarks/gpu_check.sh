#!/usr/bin/env bash
# Issue 10's GPU measurement of compression: benchmarks/device_share.py on CUDA, in about 2-4 minutes.
#
# For a GPU machine with Python and a CUDA torch but no Flower or Ray (the device tool's: torch 2.11,
# Python 3.12). The measured path imports only fedcomp's maths: numpy, torch, torchvision, constriction
# (tests/test_device_share.py checks it). Whatever of those is missing is installed, offline, from the
# wheels in $WHEELS (default: ./gpu-wheels, git-ignored: the device tool needs carry=["gpu-wheels"]),
# downloaded beforehand on a machine with a network, e.g. for torch 2.11 / Python 3.12:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d gpu-wheels \
#       constriction==0.5.0 torchvision==0.26.0 numpy pillow        # about 28 MB
#
# Run from the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]   (OUT_DIR default: $OUT or .)
# It writes OUT_DIR/device_share_cuda.md: per preset (topk-ef, stc, nnc if DeepCABAC is installed,
# fsfl-bidir) and model (resnet20, resnet18), the compression share of one local epoch over 5,000
# examples for the numpy path and the torch (GPU) path, and whether both gave the same payload bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-.}}"
WHEELS="${WHEELS:-gpu-wheels}"
PY="${PYTHON:-python3}"

"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF

missing=()
for pair in numpy:numpy PIL:pillow torchvision:torchvision constriction:constriction; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from $WHEELS: ${missing[*]}"
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${missing[@]}"
fi

PYTHONPATH="$PWD" timeout 480 "$PY" benchmarks/device_share.py --device cuda --reps 7 \
    --out "$OUT_DIR/device_share_cuda.md"
