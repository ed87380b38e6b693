"""Shared helpers of the pretraining tests: a tiny config, tiny prepared data (built once per session and
reused through `run_prepare`'s cache), and running `bert pretrain` in this process or as a subprocess, with
the fault-injection and audit hooks of tests/faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bert.config import PretrainConfig, load_config

REPO = Path(__file__).resolve().parent.parent

# One thread: the tiny model gains nothing from more, a busy machine makes extra threads spin, and runs in
# this process and in subprocesses must use the same arithmetic to be bit-identical. `pretrain_here` sets it
# again before every run, because other code in this process (fine-tuning) may have changed it.
torch.set_num_threads(1)

TINY = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "data.corpus=[synthetic]",
    "data.synthetic.num_documents=40",
    "data.vocab_size=300",
    "data.max_seq_length=32",
    "data.max_predictions_per_seq=5",
    "data.validation_fraction=0.1",
    "data.num_proc=1",
    "optimizer.lr=1e-3",
    "optimizer.warmup_steps=2",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.eval_every=0",
    "train.eval_batches=2",
    "train.save_every=2",
    "train.keep_last=null",
    "train.log_every=1",
    "logging.trackers=[]",
    "logging.progress_bar=false",
]
"""A tiny run: BERT L2/H32, vocabulary of a few hundred, sequences of 32 tokens, 6 steps of 4 sequences."""


def tiny_overrides(cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.cache_dir={cache_dir}", f"train.output_dir={run_dir}", *extra]


def tiny_pretrain_config(cache_dir: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, tiny_overrides(cache_dir, run_dir, *extra))


def prepare_tiny(cache_dir: Path) -> Path:
    """The tiny prepared dataset (reused when already there with the same settings)."""
    from bert.data.prepare import run_prepare

    return run_prepare(tiny_pretrain_config(cache_dir, cache_dir / "unused"), progress=False)


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide singletons, so that one test process can run several trainings."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def pretrain_here(
    cache_dir: Path,
    run_dir: Path,
    *extra: str,
    faults: tuple[str, ...] = (),
    record_ids: bool = False,
    clock=None,
) -> dict:
    """`pretrain` in this process; `faults` as in tests/faults.py, `record_ids` writes the data order,
    `clock` a TrainHooks whose clock replaces time (tests/faults.StepClock)."""
    from bert.pretrain import pretrain
    from tests.faults import hooks

    reset_accelerate()
    torch.set_num_threads(1)
    try:
        return pretrain(
            tiny_pretrain_config(cache_dir, run_dir, *extra),
            hooks(faults, run_dir if record_ids else None, *([clock] if clock else [])),
        )
    finally:
        reset_accelerate()


def run_cli(
    cache_dir: Path,
    run_dir: Path,
    *extra: str,
    faults: tuple[str, ...] = (),
    record_ids: bool = False,
    nproc: int = 1,
    timeout: int = 180,
):
    """`bert pretrain` through the CLI in a subprocess (torchrun with gloo when nproc > 1), with the test
    hooks (tests/pretrain_runner.py); returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in this process (see set_num_threads above)
    env.pop("RANK", None)
    flags = [f"--fault={spec}" for spec in faults] + (["--record-ids"] if record_ids else [])
    runner = str(REPO / "tests" / "pretrain_runner.py")
    args = [runner, *flags, "--", *tiny_overrides(cache_dir, run_dir, *extra)]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            "localhost:0",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics(run_dir) if "train/loss" in m}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def recorded_ids(run_dir: Path, rank: int = 0) -> list[dict]:
    path = Path(run_dir) / f"example_ids_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
