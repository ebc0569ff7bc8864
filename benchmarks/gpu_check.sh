#!/usr/bin/env bash
# One prepared GPU check (issue 11), <= 5 minutes on one GPU: a ViT-S/16 (timm, random weights: nothing
# downloads) on 6,000 synthetic 224x224 images through exits-on-frozen-backbone -> path cache -> predictors
# -> curves -> dynamic engine, printing per-stage throughput and peak GPU memory (a README table).
# Run from the repository root after `make venv`:  bash benchmarks/gpu_check.sh [extra gpu_check.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 210 "$PY" benchmarks/gpu_check.py --device cuda "$@"
# a shorter second pass with the reference level in bf16 (quant.ref_dtype)
timeout 80 "$PY" benchmarks/gpu_check.py --device cuda --n 2000 --ref-dtype bfloat16 "$@"
