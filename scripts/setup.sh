#!/usr/bin/env bash
# Idempotent set-up of a fresh CPU machine: a virtualenv in .venv holding osora with its
# pipeline and dev extras. A second run reuses it and reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium for the rating page's browser test (tests/eval/study): Debian's packages,
# whose chromedriver matches the browser's version.
if [ ! -x /usr/bin/chromedriver ]; then
  apt_get=(env DEBIAN_FRONTEND=noninteractive apt-get -qq)
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then apt_get=(sudo "${apt_get[@]}"); else apt_get=(); fi
  fi
  if [ ${#apt_get[@]} -eq 0 ] || ! { "${apt_get[@]}" update \
      && "${apt_get[@]}" install -y chromium chromium-driver >/dev/null; }; then
    echo "warning: could not install Debian's chromium + chromium-driver (needs root or sudo);" \
         "the browser test in tests/eval/study will fail" >&2
  fi
fi

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
