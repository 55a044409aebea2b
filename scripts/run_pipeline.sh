#!/usr/bin/env bash
# The main job on a fresh machine: set-up (idempotent), the whole DVC pipeline on the profile
# in params/ (the tiny default unless `osora config apply` changed it), then where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # DVC stage commands run `python` from this environment
dvc repro "$@"
osora results
