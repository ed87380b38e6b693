#!/usr/bin/env bash
# Multi-node pretraining under SLURM that continues across allocations by itself: one launcher per node
# (python -m bert.launch, torchrun that leaves SIGTERM to the workers), 8 GPUs each, DDP.
#
#   sbatch --nodes 4 scripts/slurm_pretrain.sh configs/pretrain/bert_base_phase1.yaml [key=value ...]
#
# - Overrides reach `bert pretrain` untouched ("$@": 'data.corpus=[/a, /b]' stays one argument).
# - 10 minutes before the time limit SLURM signals this script (--signal=B:USR1@600); it asks the workers to
#   stop through a file ($BERT_STOP_FILE, which every node sees), they save one checkpoint and exit 0, and
#   the script requeues the job (scontrol requeue) and exits 0. The requeued job resumes from that checkpoint:
#   a multi-day run goes on without a person. (--requeue alone requeues only on node failure or preemption.)
# - Preemption: SLURM sends SIGTERM to every process; the workers save and exit 0, the launcher ignores it,
#   so the job ends "stopped to resume", and SLURM requeues it (--requeue).
# - The rendezvous port comes from the job id, so two jobs sharing a node do not collide.
# - train.output_dir must be on a filesystem every node mounts (the run checks and says so), and the data
#   should be prepared beforehand (`bert prepare CONFIG ...`), not by the job while the GPUs wait.
#SBATCH --job-name=bert-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: sbatch --nodes N scripts/slurm_pretrain.sh CONFIG.yaml [key=value ...]" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck disable=SC1091
. "${BERT_VENV:-.venv}/bin/activate"
JOB="${SLURM_JOB_ID:-0}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | sed -n 1p)  # reads all: no SIGPIPE
MASTER_PORT=${MASTER_PORT:-$((20000 + JOB % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export BERT_STOP_FILE="${BERT_STOP_FILE:-$PWD/.bert-stop-$JOB}"
rm -f "$BERT_STOP_FILE"  # a requeued job keeps its id: an old request must not stop it at once
echo "$(date '+%F %T') job $JOB (restart ${SLURM_RESTART_COUNT:-0}): $NNODES node(s), rendezvous $MASTER_ADDR:$MASTER_PORT"

requeue=0
on_time_limit() {
    echo "$(date '+%F %T') time limit near: asking the workers to save and stop"
    requeue=1
    touch "$BERT_STOP_FILE"
}
on_terminate() {
    echo "$(date '+%F %T') SIGTERM (preemption or scancel): the workers save and stop"
}
trap on_time_limit USR1
trap on_terminate TERM

srun --kill-on-bad-exit=1 python -m bert.launch \
    --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$JOB" \
    -m bert.cli pretrain "$@" &
launcher=$!
status=0
while true; do  # `wait` returns early when a trapped signal arrives: wait again until srun has ended
    wait "$launcher" && status=0 || status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
rm -f "$BERT_STOP_FILE"
if [ "$requeue" = 1 ] && [ "$status" = 0 ]; then
    scontrol requeue "$JOB"
    echo "$(date '+%F %T') saved before the time limit; job $JOB requeued, it resumes from the checkpoint"
fi
exit "$status"
