#!/usr/bin/env bash
# Idempotent set-up of a fresh CPU machine: a virtualenv in .venv holding osora with its
# pipeline and dev extras. A second run reuses it and reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.osora-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The exact pin takes the local CPU wheel; any other torch spec would pull GBs of CUDA
  # packages. torchvision is never installed (its registry build is CUDA-only).
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet torch==2.13.0
  fi
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
