"""State dicts in and out: Hugging Face BERT folders, this project's folders, and their key names.

Our parameter names ARE Hugging Face's (bert.embeddings.word_embeddings.weight, bert.encoder.layer.0.attention
.self.query.weight, cls.predictions.transform.dense.weight, classifier.weight, ...), so conversion is only:
adding or removing the `bert.` prefix (checkpoints of a bare BertModel, such as MiniLM, have none), renaming
the LayerNorm gamma/beta of old TensorFlow conversions, and writing each tied tensor once.

Reading runs no code: model.safetensors first, else pytorch_model.bin through torch.load(weights_only=True).
"""

from __future__ import annotations

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


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a model folder, safetensors first; raises UserError when there are none."""
    folder = Path(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / SAFETENSORS_NAME))
    if (folder / PYTORCH_NAME).is_file():
        return torch.load(folder / PYTORCH_NAME, map_location="cpu", weights_only=True)
    raise UserError(f"{folder}: no {SAFETENSORS_NAME} or {PYTORCH_NAME} in the model folder")


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
