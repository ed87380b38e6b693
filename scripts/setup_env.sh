#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install the project into it.
# Usage: source scripts/setup_env.sh [EXTRAS]     e.g. EXTRAS=test
# torch is installed first from TORCH_SPEC (default torch==2.13.0, the CPU build these machines' pip finds
# locally). Elsewhere, a CPU-only user avoids the CUDA download with
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" bash scripts/demo.sh
set -euo pipefail
extras="${1:-}"
venv="${BERT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
if [ -n "$extras" ]; then
    python -m pip install -q -e ".[$extras]"
else
    python -m pip install -q -e .
fi
