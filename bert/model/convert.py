"""State dicts in and out: Hugging Face BERT folders, this project's folders, and their key names.

Our parameter names ARE Hugging Face's (bert.embeddings.word_embeddings.weight, bert.encoder.layer.0.attention
.self.query.weight, cls.predictions.transform.dense.weight, classifier.weight, ...), so conversion is only:
adding or removing the `bert.` prefix (checkpoints of a bare BertModel, such as MiniLM, have none), renaming
the LayerNorm gamma/beta of old TensorFlow conversions, and writing each tied tensor once.

Reading runs no code: model.safetensors first, else pytorch_model.bin through torch.load(weights_only=True).
`load_weights` is the one place that puts a state dict into a model: it checks shapes and returns what was
missing, unexpected or mismatched, for the caller to report.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bert.errors import UserError

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
_BASE_MODULES = ("embeddings.", "encoder.", "pooler.")
# Keys that alias another tensor (tied weights): never written, always re-tied by the model.
TIED_ALIASES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


VOCABULARY_KEYS = (
    "word_embeddings.weight",
    "predictions.bias",
    "predictions.decoder.weight",
    "predictions.decoder.bias",
)
"""The tensors with one row per vocabulary entry."""


def trim_vocabulary(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """`state` with its vocabulary tables cut to `vocab_size` rows (the padding rows dropped)."""
    return {k: v[:vocab_size] if k.endswith(VOCABULARY_KEYS) else v for k, v in state.items()}


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a model folder, safetensors first; raises UserError when there are none."""
    folder = Path(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(folder / SAFETENSORS_NAME))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise UserError(f"{folder / SAFETENSORS_NAME}: unreadable ({str(err)[:120]})") from None
    if (folder / PYTORCH_NAME).is_file():
        import pickle

        try:  # weights_only: tensors only, no code from the file runs
            return torch.load(folder / PYTORCH_NAME, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"{folder / PYTORCH_NAME}: not loadable as plain tensors ({reason[:120]}); nothing in it was "
                f"run. Convert it to {SAFETENSORS_NAME} where you trust it, or use a safetensors checkpoint"
            ) from None
    raise UserError(f"{folder}: no {SAFETENSORS_NAME} or {PYTORCH_NAME} in the model folder")


def weights_digest(folder: str | Path) -> str | None:
    """A hash of a model folder's weights file (None when it has none): what a result was computed from,
    whatever the folder's path. Cached by the file's size and modification time."""
    for name in (SAFETENSORS_NAME, PYTORCH_NAME):
        path = Path(folder) / name
        if path.is_file():
            stat = path.stat()
            return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return None


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from bert.fs import file_sha256

    return file_sha256(Path(path))[:16]


def normalize_keys(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to ours for a model whose encoder lives under `prefix` ('bert.' or '')."""
    out = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if prefix and key.startswith(_BASE_MODULES):
            key = prefix + key
        elif not prefix and key.startswith("bert."):
            key = key[len("bert.") :]
        out[key] = value
    return out


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without tied aliases, each tensor contiguous (safetensors refuses sharing)."""
    state = model.state_dict()
    return {
        k: v.detach().contiguous()
        for k, v in state.items()
        if k not in TIED_ALIASES or TIED_ALIASES[k] not in state
    }


def write_state_dict(state: dict[str, torch.Tensor], folder: str | Path) -> None:
    from safetensors.torch import save_file

    save_file(state, str(Path(folder) / SAFETENSORS_NAME), metadata={"format": "pt"})


@dataclass
class LoadReport:
    """What `load_weights` could not take over one to one."""

    missing: list[str] = field(default_factory=list)
    """Model weights the state dict lacks or whose shape was mismatched: they keep their initialisation
    (tied aliases not listed)."""
    unexpected: list[str] = field(default_factory=list)
    """State dict entries the model has no place for (the heads of other task classes not listed)."""
    mismatched: list[str] = field(default_factory=list)
    """'key: saved (a, b), model (c, d)' for weights left initialised (ignore_mismatched_sizes)."""


_OTHER_HEADS = ("cls.", "classifier.")


def load_weights(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignore_mismatched_sizes: bool = False,
    extend_positions: bool = False,
    extend_vocabulary: bool = False,
) -> LoadReport:
    """Copy `state` (keys already ours, see `normalize_keys`) into `model`, checking every shape.

    A shape mismatch is a UserError naming the key, unless `ignore_mismatched_sizes` (then the weight keeps
    its initialisation and is reported), or `extend_positions` and the key is the position table (phase 2
    of pretraining grows it: the saved rows are copied, the new ones keep their initialisation), or
    `extend_vocabulary` and the key is a vocabulary table (the padding rows of train.pad_vocab_multiple).
    """
    own = model.state_dict()
    report = LoadReport()
    state = dict(state)
    for key, value in list(state.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        grows = (extend_positions and key.endswith("position_embeddings.weight")) or (
            extend_vocabulary and key.endswith(VOCABULARY_KEYS)
        )
        if grows and value.shape[1:] == own[key].shape[1:] and value.shape[0] < own[key].shape[0]:
            rows = min(value.shape[0], own[key].shape[0])
            state[key] = torch.cat([value[:rows], own[key][rows:]])
            continue
        problem = f"{key}: saved {tuple(value.shape)}, model {tuple(own[key].shape)}"
        if not ignore_mismatched_sizes:
            raise UserError(
                f"{source}: weight {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)} (check config.json)"
            )
        report.mismatched.append(problem)
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    report.missing = [k for k in missing if not (k in TIED_ALIASES and TIED_ALIASES[k] in state)]
    report.unexpected = [
        k for k in unexpected if not (k.startswith(_OTHER_HEADS) or k.endswith("position_ids"))
    ]
    return report
