#!/usr/bin/env bash
# Benchmark/figure: BERT-mini (L4/H256), sequence length 128, a few hundred steps on the CPU over the shared
# text corpus (../shared/data/corpus), showing the MLM loss falling. Prints the eval curve and the wall time.
# Usage: bash scripts/pretrain_shared_corpus.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${BERT_VENV:-.venv}/bin/activate"
CORPUS=${CORPUS:-../shared/data/corpus}
RUN=${RUN:-runs/shared_corpus_mini}
if [ ! -d "$CORPUS" ]; then
    echo "error: $CORPUS not found" >&2
    exit 1
fi
uptime
start=$(date +%s)
bert pretrain configs/pretrain/shared_corpus_mini.yaml data.corpus="[$CORPUS]" train.output_dir="$RUN" "$@"
end=$(date +%s)
echo "wall time: $((end - start)) s (data preparation included)"
uptime
