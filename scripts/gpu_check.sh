#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): bf16 bench of every attention path against transformers with MFU,
# flash-attn varlen against SDPA, the no-host-sync check, 200 bf16 pretraining steps of BERT-base, and a
# compiled against an eager step. About 5 minutes on one H100/H200; writes gpu_check.json and gpu_check.txt.
#
# Usage: bash scripts/gpu_check.sh [--device cpu] [--out DIR] [--corpus PATH] [--corpus-mb N]
#   --device cpu   the dry run (tiny sizes), on a machine without a GPU
#   --out          default $OUT if that is set (a job's output folder), else runs/gpu_check
#   --corpus       default ../shared/data/corpus; on a machine where that is not beside the checkout, copy
#                  a slice into an ignored folder of the repo and pass it (e.g. --corpus .gpu_data/corpus)
#
# What it installs: nothing from a network. The project runs from the checkout (PYTHONPATH). Missing Python
# packages can be brought as wheels in .whl/ (ignored by git), installed with --no-index; flash-attn only if
# a wheel of it is there (never built from source). Where the GPU machine's Python lacks `datasets` (and its
# dill and multiprocess), download them on a machine with a network with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl datasets dill multiprocess
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
args=("$@")
if [[ " ${args[*]} " != *" --out "* ]]; then
    args+=(--out "${OUT:-runs/gpu_check}")
fi
site=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
    for wheel in .whl/*.whl; do
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheel" \
            || echo "gpu_check: could not install $wheel (skipped)" >&2
    done
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import flash_attn" 2>/dev/null; then
    echo "gpu_check: flash-attn is not installed (put a wheel in .whl/ to measure its varlen kernel)" >&2
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true WANDB_MODE=disabled HF_HUB_OFFLINE=1
exec "$PYTHON" scripts/gpu_check.py "${args[@]}"
