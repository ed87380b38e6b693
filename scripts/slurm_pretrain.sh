#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one `accelerate launch` per node, 8 GPUs each, DDP.
#   sbatch --nodes 4 scripts/slurm_pretrain.sh configs/pretrain/bert_base_phase1.yaml [key=value ...]
# Re-submitting the same command resumes from the latest complete checkpoint in train.output_dir (which must be
# on a filesystem shared by all nodes). SLURM sends SIGTERM before the time limit (--signal below): every process
# finishes its step, saves the same checkpoint and exits 0; --requeue then resubmits the job.
#SBATCH --job-name=bert-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: sbatch --nodes N scripts/slurm_pretrain.sh CONFIG.yaml [key=value ...]" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
# shellcheck disable=SC1091
. "${BERT_VENV:-.venv}/bin/activate"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
# `srun` starts one launcher per node; each learns its rank from SLURM_NODEID. `exec` lets the launcher receive
# SLURM's SIGTERM directly and forward it to its workers.
srun --kill-on-bad-exit=1 bash -c "exec accelerate launch \
    --config_file configs/accelerate/multinode.yaml \
    --num_machines $NNODES --num_processes $((NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
    -m bert.cli pretrain $*"
