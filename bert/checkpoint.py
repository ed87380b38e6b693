"""Crash-safe training checkpoints: step folders, a completion marker, keep-last pruning, and export.

Layout of a run folder (`train.output_dir`):

    checkpoints/step_0000400/          one folder per saved step, written by bert.pretrain.save
        model.safetensors              model weights (Accelerate's `save_state`; FSDP writes its own files)
        optimizer.bin                  optimizer state
        custom_checkpoint_0.pkl        the LR schedule (registered with Accelerate as a custom object)
        scaler.pt                      fp16 grad scaler (only with mixed_precision=fp16)
        random_states_<rank>.pkl       Python, NumPy, torch (and CUDA) RNG states of every process
        tokenizer/                     the run's tokenizer, so the folder exports on its own
        meta.json                      readable: step, data position, counters, tracker run id, last eval, config
        COMPLETE                       written LAST: a manifest {file: size}; without it the folder is ignored
    checkpoints/.tmp-step_0000400/     where a checkpoint is written before the atomic rename
    export/                            the final model in Hugging Face format with its tokenizer

A checkpoint is chosen for resuming only if COMPLETE exists and every file it lists has its recorded size,
so a folder cut short by a crash (no marker, or a truncated file) is skipped in favour of the previous one.
Old checkpoints are deleted only after the new one is complete (we do not use Accelerate's total_limit, which
deletes before saving).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from bert.errors import UserError

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run folder holding the step folders."""
MARKER = "COMPLETE"
"""File written last in a step folder; holds the manifest of file sizes."""
META = "meta.json"
"""Readable metadata of a checkpoint."""
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_folder(run_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint of optimizer step `step`."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def temp_folder(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return Path(run_dir) / CHECKPOINTS / f".tmp-step_{step:07d}"


def _manifest(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def is_complete(folder: str | Path) -> bool:
    """True if `folder` has its marker and every file the marker lists exists with its recorded size."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MARKER).read_text())
        json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or META not in manifest:
        return False
    for name, size in manifest.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
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


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's meta.json as a dict."""
    return json.loads((Path(folder) / META).read_text())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def finalize(temp: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write meta.json, then the marker, then rename `temp` to `final` (main process only).

    The order makes a crash at any point harmless: before the rename nothing looks like a step folder, and a
    step folder without a valid marker is never chosen.
    """
    (temp / META).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    _fsync_tree(temp)
    marker = temp / MARKER
    marker.write_text(json.dumps(_manifest(temp), indent=1) + "\n")
    with open(marker, "rb") as handle:
        os.fsync(handle.fileno())
    if final.exists():  # an older attempt of the same step (e.g. saved, then crashed before pruning)
        shutil.rmtree(final)
    os.replace(temp, final)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def prune(run_dir: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and stale temp folders; returns deleted."""
    root = Path(run_dir) / CHECKPOINTS
    deleted: list[Path] = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".tmp-"):
                shutil.rmtree(child, ignore_errors=True)
                deleted.append(child)
    if keep_last is None or keep_last <= 0:
        return deleted
    for folder in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
        deleted.append(folder)
    return deleted


# ---------------------------------------------------------------------------------------------- compatibility

# Keys that must match between a checkpoint's config and the current one for the weights and the data
# position to mean the same thing. Everything else (lr, steps, logging, ...) may change on resume.
_MUST_MATCH = (
    "model.vocab_size",
    "model.hidden_size",
    "model.num_hidden_layers",
    "model.num_attention_heads",
    "model.intermediate_size",
    "model.max_position_embeddings",
    "model.type_vocab_size",
    "model.pre_layer_norm",
    "optimizer.name",
    "train.batch_size",
    "train.gradient_accumulation_steps",
    "tokenizer",
    "num_processes",
)


def compatibility_problems(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of `_MUST_MATCH` (flattened 'a.b' keys) whose values differ, as 'key: saved -> current'."""
    problems = []
    for key in _MUST_MATCH:
        if key in saved and key in current and saved[key] != current[key]:
            problems.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    return problems


def check_compatible(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a one-line UserError listing every differing key, instead of failing inside load_state_dict."""
    problems = compatibility_problems(saved, current)
    if problems:
        raise UserError(
            f"cannot resume from {folder}: the config differs in {'; '.join(problems)} "
            "(use another train.output_dir, or train.resume=false, or train.init_from for weights only)"
        )


# ------------------------------------------------------------------------------------------------- export


def copy_tokenizer(source: str | Path | None, output: str | Path) -> None:
    """Copy a Hugging Face tokenizer folder's files into `output` (no-op when source is None)."""
    if source is None or not Path(source).is_dir():
        return
    for path in Path(source).iterdir():
        if path.is_file():
            shutil.copy2(path, Path(output) / path.name)


def write_export(model: Any, tokenizer_dir: str | Path | None, output: str | Path) -> Path:
    """Save `model` (a BertForPreTraining on CPU) with its tokenizer as a Hugging Face folder, atomically."""
    output = Path(output)
    temp = output.parent / f".tmp-{output.name}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    model.save_pretrained(temp)
    copy_tokenizer(tokenizer_dir, temp)
    if output.exists():
        shutil.rmtree(output)
    os.replace(temp, output)
    return output


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> Path:
    """`bert export`: write a checkpoint (a step folder, or a run folder's latest) as a Hugging Face folder.

    The result holds config.json, model.safetensors and the tokenizer; `transformers.BertForPreTraining`
    and `bert finetune` load it.
    """
    import torch
    from safetensors.torch import load_file

    from bert.model import BertForPreTraining
    from bert.model.config import BertConfig

    folder = Path(checkpoint)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such checkpoint folder")
    if not (folder / MARKER).exists() and (folder / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise UserError(f"{folder}: run folder has no complete checkpoint")
        folder = latest
    if not is_complete(folder):
        raise UserError(f"{folder}: not a complete checkpoint (no {MARKER} marker, or a file is truncated)")
    meta = read_meta(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{folder}: no model.safetensors (a sharded FSDP checkpoint must be merged first)")
    model = BertForPreTraining(BertConfig.from_dict(meta["config"]["model"]))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (the MLM decoder shares the word embeddings) are stored once; anything else is an error.
    tied = {name for name, p in model.state_dict(keep_vars=True).items() if name not in state}
    missing = [k for k in missing if k not in tied or not _is_tied(model, k)]
    if missing or unexpected:
        raise UserError(
            f"{weights}: weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        return write_export(model, folder / "tokenizer", output)


def _is_tied(model: Any, name: str) -> bool:
    """True if parameter `name` shares storage with another parameter of `model`."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    if target is None:
        return False
    return any(other is target for key, other in params.items() if key != name)
