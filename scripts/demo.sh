#!/usr/bin/env bash
# The README's main job, end to end on a laptop CPU (a few minutes):
#   1. set up the environment (.venv with the project installed),
#   2. pretrain a tiny BERT on the built-in synthetic corpus (MLM and NSP accuracy rise; see the eval lines),
#   3. fine-tune the exported model on a sentence-pair task.
# Usage: bash scripts/demo.sh [key=value ...]   (overrides of the pretraining config, e.g. train.max_steps=200)
# Re-running resumes/reuses: the pretraining run continues from its latest checkpoint (or is already done).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh   # tensorboard is a core dependency: the demo logs there (and to an offline wandb run)
set -euo pipefail   # setup_env.sh is sourced; keep strict mode here

RUN=runs/demo
echo "== pretraining (configs/pretrain/demo.yaml) -> $RUN"
bert pretrain configs/pretrain/demo.yaml train.output_dir="$RUN" "$@"
echo "== exported model: $RUN/export"

FINETUNE_CONFIG=configs/finetune/demo.yaml
if [ ! -f "$FINETUNE_CONFIG" ]; then
    echo "error: $FINETUNE_CONFIG not found: the fine-tuning step of the demo is not available in this checkout" >&2
    exit 1
fi
echo "== fine-tuning ($FINETUNE_CONFIG) from $RUN/export"
bert finetune "$FINETUNE_CONFIG" model_path="$RUN/export"
