"""Training checkpoints that cannot run code or hide damage: the layout, the checkpointer, and export.

Layout of a run folder (`train.output_dir`):

    checkpoints/step_0000400/          one folder per saved step
        model.safetensors              model weights (tied weights written once, as in export)
        optimizer.safetensors          the optimizer's tensors (Adam moments, step counts)
        optimizer.json                 the rest of its state dict (param groups, the layout of the tensors)
        scaler.json                    fp16 grad scaler (only with mixed_precision=fp16)
        rng_<rank>.safetensors         Python, NumPy, torch (and CUDA) RNG states of every process
        tokenizer/                     the run's tokenizer, so the folder exports on its own
        meta.json                      readable: step, data position, counters, tracker run id, last eval, config
        COMPLETE                       written LAST: every file's size and sha256
    export/                            the final model in Hugging Face format with its tokenizer

Nothing is pickled: tensors are safetensors, everything else JSON, so loading a checkpoint someone sent you
runs no code. The learning rate is a function of the step (bert.optim.Schedule), so no scheduler object is
stored at all.

Choosing a checkpoint to resume from: the newest folder whose COMPLETE marker lists files that all exist
with their sizes (cheap); then every file's sha256 is checked and every state loaded. Any mismatch or
unreadable file is one warning naming the file, and the previous checkpoint is tried; with none left, one
error line. Folders are written under a temp name and renamed into place after the marker (bert.fs), and
deleted by renaming first, so a crash never leaves a half folder that looks whole; stale temp folders of
dead runs are removed at the next start.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from bert import fs
from bert.errors import UserError
from bert.model.config import SHAPE_FIELDS
from bert.safe_state import CheckpointError, load_rng, load_state_tree, read_json, save_rng, save_state_tree

__all__ = ["CheckpointError", "Checkpointer", "load_state_tree", "save_state_tree", "save_rng", "load_rng"]

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run folder holding the step folders."""
MARKER = "COMPLETE"
"""File written last in a step folder: the manifest of sizes and hashes."""
META = "meta.json"
MODEL = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_STATE = "optimizer.json"
SCALER = "scaler.json"
META_KEYS = ("step", "data", "counters", "run_id", "config")
"""What meta.json must hold for a resume."""
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_folder(run_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint of optimizer step `step`."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


# ------------------------------------------------------------------------------------------- the marker


def write_marker(folder: Path) -> None:
    """The manifest of every file (size and sha256), written last and fsynced."""
    fs.atomic_write_text(folder / MARKER, json.dumps(fs.manifest_of(folder, MARKER), indent=1) + "\n")


def _manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    try:
        manifest = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or META not in manifest:
        return None
    if not all(isinstance(v, dict) and "size" in v and "sha256" in v for v in manifest.values()):
        return None
    return manifest


def cheap_problem(folder: str | Path) -> str | None:
    """What the cheap check finds wrong with a step folder (no hashing), or None when it looks complete: the
    marker is there and every file it lists exists with its recorded size. The one judgement of what a step
    folder is: a folder is renamed into place only after its marker is written, so anything else is damage."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if manifest is None:
        return f"{MARKER} missing or unreadable"
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, its marker says {entry['size']}"
    return None


def is_complete(folder: str | Path) -> bool:
    """The marker is there and every file it lists exists with its recorded size (no hashing)."""
    return cheap_problem(folder) is None


def verify(folder: str | Path) -> str | None:
    """None if every file matches its hash and meta.json has what a resume needs; else the first problem."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if manifest is None:
        return f"{MARKER}: missing or unreadable"
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name}: missing"
        if path.stat().st_size != entry["size"]:
            return f"{name}: size {path.stat().st_size}, expected {entry['size']}"
        if fs.file_sha256(path) != entry["sha256"]:
            return f"{name}: content differs from its hash (damaged)"
    try:
        meta = read_json(folder / META)
    except CheckpointError as err:
        return str(err)
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        return f"{META}: no {', '.join(missing)}"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (by the cheap check), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def is_training_checkpoint(path: str | Path) -> bool:
    """Whether `path` names a training checkpoint: a step folder, or a run folder (with checkpoints/)."""
    path = Path(path)
    return (path / MARKER).is_file() or (path / CHECKPOINTS).is_dir()


def checkpoint_of(path: str | Path) -> Path:
    """The step folder that `path` names: itself, or a run folder's newest complete checkpoint."""
    path = Path(path)
    if (path / MARKER).is_file() or not (path / CHECKPOINTS).is_dir():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path}: run folder has no complete checkpoint")
    return latest


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json as a dict."""
    return json.loads((Path(folder) / META).read_text())


# ---------------------------------------------------------------------------------------- the checkpointer


class Checkpointer:
    """Owns `<run_dir>/checkpoints`: saves, picks and loads the checkpoint to resume from, prunes.

    Every process calls `save` and `load` (each writes and reads its own RNG file; the main process the rest);
    `token` is the same on every process of a run (it names the temp folder they write into).
    """

    def __init__(
        self, run_dir: str | Path, accelerator: Any, token: str, keep_last: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS
        self.accelerator = accelerator
        self.token = token
        self.keep_last = keep_last

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def clean(self, warn: Any = print) -> list[Path]:
        """Main process, under the run lock: remove dead writers' temp folders (a crash's leftovers), and set
        aside every damaged step folder, renamed, never deleted (it may hold the only copy of a user's
        weights), each named in one line through `warn`. Returns the folders set aside."""
        import time

        fs.remove_stale_temps(self.root)
        set_aside = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                problem = cheap_problem(child) if _STEP_RE.match(child.name) and child.is_dir() else None
                if problem is None:
                    continue
                target = child.with_name(f"{child.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                child.rename(target)
                set_aside.append(target)
                warn(f"checkpoint {child.name}: {problem}; set aside as {target.name} (not deleted)")
        return set_aside

    def save(
        self,
        step: int,
        model: Any,
        optimizer: torch.optim.Optimizer,
        meta: dict[str, Any],
        tokenizer_dir: Path | None = None,
    ) -> Path:
        """Write the checkpoint of `step` (module docstring); every process calls it. Returns its folder."""
        from bert.model.convert import TIED_ALIASES

        accelerator = self.accelerator
        final = step_folder(self.run_dir, step)
        temp = self.root / f"{fs.TEMP_PREFIX}{final.name}-{self.token}"
        state_dict = accelerator.get_state_dict(model)  # every process (a collective for sharded models)
        lock = None
        if self.main:
            temp.mkdir(parents=True, exist_ok=True)
            lock = fs.owner_lock(temp)
            lock.__enter__()
        try:
            accelerator.wait_for_everyone()
            save_rng(temp / rng_file(accelerator.process_index))
            if self.main:
                from safetensors.torch import save_file

                weights = {
                    k: v.detach().cpu().contiguous()
                    for k, v in state_dict.items()
                    if k not in TIED_ALIASES or TIED_ALIASES[k] not in state_dict
                }
                save_file(weights, str(temp / MODEL), metadata={"format": "pt"})
                save_state_tree(optimizer.state_dict(), temp / OPTIMIZER_TENSORS, temp / OPTIMIZER_STATE)
                if accelerator.scaler is not None:
                    save_state_tree(accelerator.scaler.state_dict(), None, temp / SCALER)
                if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
                    shutil.copytree(tokenizer_dir, temp / "tokenizer", dirs_exist_ok=True)
                (temp / META).write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
            accelerator.wait_for_everyone()
            if self.main:
                fs.default_modes(temp)
                fs.fsync_tree(temp)
                write_marker(temp)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
        if self.main:
            (temp / ".owner").unlink(missing_ok=True)
            fs.replace_folder(temp, final)
            self.prune(keep=final)
        accelerator.wait_for_everyone()
        return final

    def prune(self, keep: Path) -> list[Path]:
        """Delete all but the newest `keep_last` complete checkpoints, never `keep` (the one just saved)."""
        if not self.keep_last or self.keep_last <= 0:
            return []
        deleted = []
        for folder in list_checkpoints(self.run_dir)[: -self.keep_last]:
            if folder != keep:
                fs.remove_folder(folder)
                deleted.append(folder)
        return deleted

    def candidates(self, before: Path | None = None) -> list[Path]:
        """The checkpoints to resume from, oldest first: all, or those older than `before`."""
        found = list_checkpoints(self.run_dir)
        return found if before is None else [c for c in found if c.name < before.name]

    def choose(self, warn: Any, before: Path | None = None) -> Path | None:
        """Main process: the newest checkpoint (older than `before`, when given) that verifies; each one that
        does not is one `warn` line."""
        for folder in reversed(self.candidates(before)):
            problem = verify(folder)
            if problem is None:
                return folder
            warn(f"checkpoint {folder.name}: {problem}; trying the previous one")
        return None

    def has(self, step: int) -> bool:
        """Whether a checkpoint of `step` exists (complete or not: its writer finished or failed loudly)."""
        return step_folder(self.run_dir, step).exists()

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        return latest_checkpoint(self.run_dir)

    def load(self, folder: Path, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer, grad scaler and this process's RNG from `folder`; returns meta.json.

        Raises CheckpointError naming the file when a state cannot be restored."""
        from safetensors.torch import load_file

        from bert.model.convert import load_weights

        accelerator = self.accelerator
        meta = read_json(folder / META)
        try:
            state = load_file(str(folder / MODEL))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{MODEL}: unreadable ({err})") from None
        unwrapped = accelerator.unwrap_model(model)
        try:
            report = load_weights(unwrapped, state, str(folder / MODEL))
        except UserError as err:
            raise CheckpointError(str(err)) from None
        if report.missing or report.unexpected:
            raise CheckpointError(f"{MODEL}: missing {report.missing}, unexpected {report.unexpected}")
        try:
            optimizer_state = load_state_tree(folder / OPTIMIZER_TENSORS, folder / OPTIMIZER_STATE)
            optimizer.load_state_dict(optimizer_state)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{OPTIMIZER_STATE}: cannot be restored ({err})") from None
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(load_state_tree(None, folder / SCALER))
        if meta.get("num_processes", accelerator.num_processes) == accelerator.num_processes:
            load_rng(folder / rng_file(accelerator.process_index))
        # else: another number of processes (an elastic resume); the caller reseeds every process
        return meta


# ---------------------------------------------------------------------------------------------- compatibility

# Keys that must match between a checkpoint's config and the current one for the weights and the data
# position to mean the same thing. Optimizer hyper-parameters, the schedule and max_steps may change on
# resume (bert.optim.Schedule: the new settings apply from the resumed step on).
_MUST_MATCH = (*(f"model.{name}" for name in SHAPE_FIELDS), "optimizer.name", "tokenizer")
# The batch may be split differently on resume (processes x per-device batch x accumulation): only the global
# batch, the examples of one optimizer step, must stay (bert.sampler).
_SPLIT = ("train.batch_size", "train.gradient_accumulation_steps", "num_processes")


def global_batch(compat: dict[str, Any]) -> tuple[int, str] | None:
    """(sequences per optimizer step, 'b x k x N') of a compat record (older ones hold only the split)."""
    if not all(key in compat for key in _SPLIT):
        return None
    b, k, n = (int(compat[key]) for key in _SPLIT)
    return b * k * n, f"{b} x {k} x {n}"


def compatibility_problems(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of `_MUST_MATCH` (flattened 'a.b' keys) whose values differ, as 'key: saved -> current', and the
    global batch when it changed."""
    problems = []
    for key in _MUST_MATCH:
        if key in saved and key in current and saved[key] != current[key]:
            problems.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    old, new = global_batch(saved), global_batch(current)
    if old and new and old[0] != new[0]:
        problems.append(
            f"the global batch (train.batch_size x train.gradient_accumulation_steps x processes): "
            f"{old[0]} = {old[1]} -> {new[0]} = {new[1]}; it must stay {old[0]} (any split of it resumes)"
        )
    return problems


def check_compatible(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a one-line UserError listing every differing key, instead of failing inside load_state_dict."""
    problems = compatibility_problems(saved, current)
    if problems:
        raise UserError(
            f"cannot resume from {folder}: the config differs in {'; '.join(problems)} "
            "(use another train.output_dir, or train.overwrite=true to start over, or train.init_from for "
            "weights only)"
        )
