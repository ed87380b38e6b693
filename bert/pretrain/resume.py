"""Which checkpoint a pretraining run continues from, and what a checkpoint must agree on.

`Resume.restore` is the whole policy: the fresh-start rules (`train.resume=false` refuses a folder that holds a
run unless `train.overwrite=true`, which deletes it once: a one-shot marker lets a scheduler re-run the same
command and resume instead of deleting again), the folder cleaned (dead writers' temp folders removed, damaged
step folders set aside), then the newest checkpoint that verifies and is compatible, walked back until one
loads on every process. The main process decides; every process gets its answer. The files and their layout
are the Checkpointer's (bert/checkpoint.py); `compat_keys` says what may not change on resume,
`changed_settings` what did and applies from the resumed step on, `resumed_index` where in the epoch the data
continues on this run's split of the global batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert import checkpoint as ckpt
from bert import fs
from bert.config import PretrainConfig, flatten, to_dict
from bert.errors import UserError
from bert.training import all_reduce_sum, broadcast_token

OVERWRITE_MARKER = ".started_fresh"
"""In a run folder: the fingerprint of the command that started the run with train.resume=false."""

RESUME_SETTINGS = (
    "optimizer.",
    "train.max_steps",
    "train.max_time",
    "train.max_tokens",
    "train.batch_size",
    "train.gradient_accumulation_steps",
)
"""Settings that may change on resume and apply from the resumed step on."""


@dataclass
class Resumed:
    """The checkpoint a run continues from: its folder and its meta.json."""

    folder: Path
    meta: dict[str, Any]


class Resume:
    """The resume policy of one run folder (module docstring); `say` prints a line on the main process."""

    def __init__(
        self, cfg: PretrainConfig, checkpointer: ckpt.Checkpointer, compat: dict[str, Any], say: Callable
    ) -> None:
        self.cfg = cfg
        self.checkpointer = checkpointer
        self.run_dir = checkpointer.run_dir
        self.accelerator = checkpointer.accelerator
        self.compat = compat
        self.say = say
        self.resuming = cfg.train.resume
        self.set_aside: list[Path] = []

    def restore(self, model: Any, optimizer: Any) -> Resumed | None:
        """Load the newest usable checkpoint into `model` and `optimizer` on every process (None: start
        fresh). A checkpoint that fails to load on any process is named, and the one before it is tried."""
        folder = self.choose()
        while folder is not None:
            problem = None
            try:
                meta = self.checkpointer.load(folder, model, optimizer)
            except ckpt.CheckpointError as err:
                problem = str(err)
            if all_reduce_sum(self.accelerator, [float(problem is not None)])[0] == 0:
                return Resumed(folder, meta)
            self.say(f"warning: checkpoint {folder.name}: {problem or 'cannot be restored on a process'}")
            folder = self.choose(before=folder)
        return None

    def choose(self, before: Path | None = None) -> Path | None:
        """The main process decides (and cleans, and checks compatibility); every process gets its answer."""
        chosen = ""
        if self.accelerator.is_main_process:
            warn = lambda line: print(f"warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
            if before is None:
                self.set_aside = self.checkpointer.clean(warn)
                self.resuming = self.fresh_start_rules()
            if self.resuming:
                found = self.checkpointer.choose(warn, before)
                chosen = str(found) if found is not None else ""
                older = self.checkpointer.candidates(before)
                if not chosen and (older or self.set_aside):
                    raise UserError(
                        f"{self.run_dir}: no usable checkpoint left ({len(older) + len(self.set_aside)} damaged), "
                        f"kept in {self.run_dir / ckpt.CHECKPOINTS}; refusing to start over on top of them: "
                        "train.resume=false train.overwrite=true starts over"
                    )
                if chosen:
                    meta = ckpt.read_meta(chosen)
                    ckpt.check_compatible(Path(chosen), meta.get("compat", {}), self.compat)
        chosen = broadcast_token(self.accelerator, chosen)
        return Path(chosen) if chosen else None

    def fresh_start_rules(self) -> bool:
        """Whether to resume. resume=false in a folder that holds a run: refuse, or with overwrite=true remove
        that run, once: a run that this same command started by overwriting (a scheduler re-running it after
        a preemption) is resumed, not deleted again."""
        if self.cfg.train.resume:
            return True
        if not ckpt.list_checkpoints(self.run_dir) and not (self.run_dir / "export").exists():
            self.mark_overwrite()
            return False
        if not self.cfg.train.overwrite:
            raise UserError(
                f"{self.run_dir} holds an earlier run (checkpoints or export) and train.resume=false: add "
                "train.overwrite=true to delete it and start over, or choose another train.output_dir"
            )
        marker = self.run_dir / OVERWRITE_MARKER
        if marker.is_file() and marker.read_text().strip() == self.command_fingerprint():
            self.say(
                f"train.overwrite=true: {self.run_dir} holds the run this same command started (re-run after a "
                "preemption?): resuming it, not deleting it"
            )
            return True
        for path in [self.run_dir / name for name in ("checkpoints", "export", "metrics.jsonl")]:
            if path.is_dir():
                fs.remove_folder(path)
            elif path.exists():
                path.unlink()
        for path in self.run_dir.glob("example_ids_rank*.jsonl"):
            path.unlink()
        self.say(
            f"train.overwrite=true: removed the earlier run's checkpoints, export and metrics in {self.run_dir}"
        )
        self.mark_overwrite()
        return False

    def command_fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(to_dict(self.cfg), sort_keys=True).encode()).hexdigest()[:16]

    def mark_overwrite(self) -> None:
        """Remember which command started this run from scratch (train.resume=false)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fs.atomic_write_text(self.run_dir / OVERWRITE_MARKER, self.command_fingerprint() + "\n")


def compat_keys(cfg: PretrainConfig, tokenizer_dir: Path, num_processes: int) -> dict[str, Any]:
    """What a resumed checkpoint must agree on (see bert.checkpoint.compatibility_problems)."""
    digest = hashlib.sha256()
    for name in ("vocab.txt", "tokenizer.json"):
        if (tokenizer_dir / name).is_file():
            digest.update((tokenizer_dir / name).read_bytes())
    return {
        **{f"model.{k}": v for k, v in to_dict(cfg.model).items() if k != "architectures"},
        "optimizer.name": cfg.optimizer.name,
        "train.batch_size": cfg.train.batch_size,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "tokenizer": digest.hexdigest()[:16],
        "num_processes": num_processes,
    }


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'optimizer.lr: 0.0001 -> 5e-05; ...' for the resumable settings that differ."""
    old, new = flatten(saved), flatten(current)
    keys = [k for k in new if k.startswith(RESUME_SETTINGS) and k in old and old[k] != new[k]]
    return "; ".join(f"{k}: {json.dumps(old[k])} -> {json.dumps(new[k])}" for k in keys)


def resumed_index(meta: dict[str, Any], batch_size: int, num_processes: int) -> int:
    """The saved data position as a micro-batch index of this run's split of the global batch."""
    data = meta["data"]
    examples = data.get("examples")
    if examples is None:  # older checkpoints: index x per-device batch x processes
        saved_batch = meta.get("config", {}).get("train", {}).get("batch_size", batch_size)
        examples = data["index"] * saved_batch * meta.get("num_processes", num_processes)
    micro_batch = batch_size * num_processes
    if examples % micro_batch:
        raise UserError(
            f"the checkpoint's data position ({examples} examples into epoch {data['epoch']}) is not a whole "
            f"number of micro-batches of {micro_batch} (train.batch_size x processes)"
        )
    return examples // micro_batch
