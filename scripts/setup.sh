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
