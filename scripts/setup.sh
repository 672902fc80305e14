#!/usr/bin/env bash
# Creates .venv in the repo root and installs redraft with its test tools.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build first,
# so that nothing later pulls gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
# The browser test of `redraft serve` uses the system Chromium (Playwright downloads none).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "note: no chromium, so tests/test_app_e2e.py will be skipped (Debian/Ubuntu: sudo apt-get install chromium)" >&2
fi
