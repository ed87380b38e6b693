#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py has the sections): bf16 bench of every attention path against
# transformers with useful and executed MFU, unpadded against SDPA, three real training steps under CUDA's
# sync debug mode, pretraining BERT-base on real text, compiled against eager. Each section has a time box;
# the whole run stays under about 8.5 minutes on one H100/H200. Writes gpu_check.json and gpu_check.txt.
#
# Usage:
#   bash scripts/gpu_check.sh --make-kit .gpu_check     # here, once: prepared real text + wheels (ignored)
#   bash scripts/gpu_check.sh [--sections a,b] [--out DIR]   # on the GPU machine, the tree carrying .gpu_check
#   bash scripts/gpu_check.sh --device cpu --out DIR     # the dry run (tiny sizes), on a machine without a GPU
#   --out defaults to $OUT if that is set (a job's output folder), else runs/gpu_check.
#
# It installs nothing from a network: the project runs from the checkout (PYTHONPATH); the kit's wheels
# (datasets, dill, multiprocess: what a bare GPU image lacks) and any in .whl/ are installed with --no-index
# into a temporary folder; flash-attn only if a wheel of it is there (torch's own varlen kernel needs none).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
args=("$@")
if [[ " ${args[*]} " == *" --make-kit "* ]]; then
    exec "$PYTHON" scripts/gpu_check.py "${args[@]}"
fi
if [[ " ${args[*]} " != *" --out "* ]]; then
    args+=(--out "${OUT:-runs/gpu_check}")
fi
site=$(mktemp -d)
shopt -s nullglob
wheels=(.gpu_check/wheels/*.whl .whl/*.whl)
missing=$("$PYTHON" -c "import importlib.util as u; print(' '.join(m for m in ('datasets', 'dill', 'multiprocess') if u.find_spec(m) is None))")
if [ -n "$missing" ] && [ ${#wheels[@]} -gt 0 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" \
        || echo "gpu_check: could not install the wheels (${wheels[*]})" >&2
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true WANDB_MODE=disabled HF_HUB_OFFLINE=1
exec "$PYTHON" scripts/gpu_check.py "${args[@]}"
