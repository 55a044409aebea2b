#!/usr/bin/env bash
# The prepared GPU check, one script for a machine with a CUDA GPU (bench/gpu_check.py has the
# parts): the CUDA kernel tests, a tiny DiT trained under torchrun on NCCL (one GPU, then all),
# MMDiT tokens/s and MFU at the paper's 256px buckets (bf16), and the time of one 256px sample.
# Under 8 minutes on one H100 or H200; one JSON.
#
#   bash bench/gpu_check.sh [OUT.json]    default: $OUT/gpu_check.json, else ./gpu_check.json
#
# Needs a Python with torch and triton ($PYTHON, else python3, else python); the model parts
# need einops and the kernel tests pytest, each skipped with the reason where it is missing.
# Exit status: 0 no part failed (skipped ones aside), 1 one failed, 2 no CUDA device.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${OUT:+$OUT/gpu_check.json}}"
out="${out:-$PWD/gpu_check.json}"
python="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [[ -z "$python" ]]; then
  echo "gpu_check: no python3 or python on PATH; set PYTHON to an interpreter with torch" >&2
  exit 2
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # osora from this checkout, uninstalled
exec "$python" "$repo/bench/gpu_check.py" --out "$out"
