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
bert pretrain configs/pretrain/demo.yaml model=mini \
    data.corpus="[$CORPUS]" data.vocab_size=8192 data.max_seq_length=128 data.max_predictions_per_seq=20 \
    data.dupe_factor=1 data.validation_fraction=0.01 \
    optimizer.lr=1e-3 optimizer.warmup_steps=30 \
    train.output_dir="$RUN" train.max_steps=300 train.batch_size=32 train.eval_every=50 train.eval_batches=4 \
    train.save_every=100 train.log_every=25 logging.progress_bar=false "$@"
end=$(date +%s)
echo "wall time: $((end - start)) s (data preparation included)"
uptime
