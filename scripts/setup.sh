#!/usr/bin/env bash
# Creates .venv in the repo root and installs redraft with its test tools.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build first, so that nothing later
# pulls gigabytes of CUDA wheels: from PyTorch's CPU wheel index where it answers within 5 seconds,
# else from the default index (pip's configuration: PyPI, and any local wheels it names).
# REDRAFT_TORCH_INDEX=URL uses another CPU index; REDRAFT_TORCH_INDEX=default skips PyTorch's.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.13.0"
CPU_INDEX="${REDRAFT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

# Whether the index at $1 answers an HTTP request within 5 seconds (name lookup included).
reachable() {
    local limit=()
    if command -v timeout >/dev/null 2>&1; then limit=(timeout 8); fi
    "${limit[@]}" python - "$1/torch/" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5)
PY
}

install_cpu_torch() {
    local started=$SECONDS
    if [ "$CPU_INDEX" != "default" ] && reachable "$CPU_INDEX"; then
        if python -m pip install -q --index-url "$CPU_INDEX" "$TORCH"; then
            echo "setup: $TORCH from the CPU index $CPU_INDEX" >&2
            return
        fi
        echo "setup: installing $TORCH from $CPU_INDEX failed; trying the default index" >&2
    elif [ "$CPU_INDEX" != "default" ]; then
        echo "setup: $CPU_INDEX did not answer (checked in $((SECONDS - started)) s)" >&2
    fi
    python -m pip install -q "$TORCH"
    echo "setup: $TORCH from the default index ($(python -c 'import torch; print(torch.__version__)'))" >&2
}

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
    install_cpu_torch
fi
python -m pip install -q -e ".[dev]"
# The browser test of `redraft serve` uses the system Chromium (Playwright downloads none).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "note: no chromium, so tests/test_app_e2e.py will be skipped (Debian/Ubuntu: sudo apt-get install chromium)" >&2
fi
