"""The model folder: a training checkpoint (or the end of a run) exported as a Hugging Face folder with its
tokenizer (`export_checkpoint`, `write_export`, the one writer of such folders), and what a path given as a
model means (`model_folder`, `resolve_model_path`).

The folder holds config.json, model.safetensors, the tokenizer and a model card (README.md, bert/card.py);
`transformers.BertForPreTraining`, `AutoTokenizer` and `bert finetune` load it. A checkpoint is verified (sizes and hashes) before it is read.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from bert import fs
from bert.checkpoint import MODEL, checkpoint_of, is_training_checkpoint, read_meta, verify
from bert.errors import UserError
from bert.tokenizer import TOKENIZER_FILES


def copy_tokenizer(source: str | Path | None, output: str | Path) -> None:
    """Copy a tokenizer's files (TOKENIZER_FILES, those it has) from `source` into `output` (None: none)."""
    if source is None or not Path(source).is_dir():
        return
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(output) / name)


def write_export(
    model: Any,
    tokenizer_dir: str | Path | None,
    output: str | Path,
    card: str | None = None,
    config_updates: dict[str, Any] | None = None,
) -> Path:
    """Save `model` (on the CPU) as a Hugging Face folder, atomically: config.json (with `config_updates`,
    such as label names), the weights, the tokenizer's files and the model card (README.md). The one way a
    model folder is written (exports, and fine-tuning's best/). The tokenizer's `model_max_length` becomes
    the model's position count, so that `tokenizer(text, truncation=True)` in transformers never makes a
    sequence the model cannot embed."""
    import json

    with fs.atomic_folder(output) as temp:
        model.save_pretrained(temp)
        if config_updates:
            config = json.loads((temp / "config.json").read_text())
            config.update(config_updates)
            (temp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer(tokenizer_dir, temp)
        limit_tokenizer_length(temp, model.config.max_position_embeddings)
        if card is not None:
            (temp / "README.md").write_text(card)
    return Path(output)


def limit_tokenizer_length(folder: Path, positions: int) -> None:
    """Set `model_max_length` in the folder's tokenizer_config.json (when there is one) to `positions`."""
    import json

    config = Path(folder) / "tokenizer_config.json"
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError):  # none, or not ours to fix: the tokenizer loader names a bad file
        return
    if not isinstance(settings, dict):
        return
    if settings.get("model_max_length", positions + 1) > positions:
        settings["model_max_length"] = positions
        config.write_text(json.dumps(settings, indent=2) + "\n")


def export_checkpoint(checkpoint: str | Path, output: str | Path) -> Path:
    """`bert export`: write a checkpoint (a step folder, or a run folder's latest) as a Hugging Face folder.

    The checkpoint is verified (sizes and hashes) first. The result holds config.json, model.safetensors and
    the tokenizer; `transformers.BertForPreTraining` and `bert finetune` load it.
    """
    import dataclasses

    from safetensors.torch import load_file

    from bert.model import BertForPreTraining
    from bert.model.config import BertConfig
    from bert.model.convert import load_weights, trim_vocabulary
    from bert.tokenizer import load_tokenizer

    if not Path(checkpoint).is_dir():
        raise UserError(f"{checkpoint}: no such checkpoint folder")
    folder = checkpoint_of(checkpoint)
    problem = verify(folder)
    if problem is not None:
        raise UserError(f"{folder}: not a usable checkpoint: {problem}")
    meta = read_meta(folder)
    config = BertConfig.from_dict(meta["config"]["model"])
    state = load_file(str(folder / MODEL))
    if (folder / "tokenizer").is_dir():  # the vocabulary's padding rows (train.pad_vocab_multiple) dropped
        vocab = load_tokenizer(folder / "tokenizer").get_vocab_size()
        if vocab < config.vocab_size:
            config = dataclasses.replace(config, vocab_size=vocab)
            state = trim_vocabulary(state, vocab)
    model = BertForPreTraining(config)
    report = load_weights(model, state, str(folder / MODEL))
    if report.missing or report.unexpected:
        raise UserError(
            f"{folder / MODEL}: weights do not match the model: missing {report.missing}, "
            f"unexpected {report.unexpected}"
        )
    from bert.card import export_card

    with torch.no_grad():
        return write_export(model, folder / "tokenizer", output, export_card(meta, model))


# ---------------------------------------------------------------------- finding a model folder


def model_folder(path: str | Path) -> Path | None:
    """The model folder at `path`: the path itself or a run folder's `export/` (whichever holds config.json);
    None for anything else (a training checkpoint is exported first, `resolve_model_path`)."""
    for folder in (Path(path), Path(path) / "export"):
        if (folder / "config.json").is_file():
            return folder
    return None


def resolve_model_path(path: str | Path, output_dir: Path, write: bool = True) -> Path:
    """A folder with config.json: the path itself, a run folder's `export/`, or a training checkpoint
    (a step folder, or a run folder's latest) exported to `<output_dir>/init_model` first."""
    path = Path(path)
    folder = model_folder(path)
    if folder is not None:
        return folder
    if is_training_checkpoint(path):
        target = output_dir / "init_model"
        if write:
            export_checkpoint(path, target)
        return target
    raise UserError(f"{path}: not a model folder (no config.json) nor a training checkpoint")
