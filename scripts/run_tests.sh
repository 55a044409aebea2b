#!/usr/bin/env bash
# The test suite on a fresh machine: set-up (idempotent), then pytest on both cores (each
# file on one worker, so a module fixture such as the DVC clone is built once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
