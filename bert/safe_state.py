"""Training states as files that cannot run code: nested states (an optimizer's state dict, a grad scaler's)
as safetensors + JSON, and every process's RNG states as safetensors. Nothing here unpickles; a file that is
missing, damaged or of another layout is a `CheckpointError` naming it, never skipped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint file that is missing, damaged or unreadable; the message names it."""


def _split_tensors(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A nested state (dicts, lists, tuples, numbers, tensors) -> JSON with {"tensor": key} placeholders."""
    if isinstance(value, torch.Tensor):
        key = prefix.strip(".") or "value"
        tensors[key] = value.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[k, _split_tensors(v, f"{prefix}{k}.", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_split_tensors(v, f"{prefix}{i}.", tensors) for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint without pickle")


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "tensor" in value:
            return tensors[value["tensor"]]
        if "dict" in value:
            # keys were ints (optimizer state ids) or strings; JSON keeps them in a list of pairs
            return {k: _join_tensors(v, tensors) for k, v in value["dict"]}
        if "list" in value:
            return [_join_tensors(v, tensors) for v in value["list"]]
        if "tuple" in value:
            return tuple(_join_tensors(v, tensors) for v in value["tuple"])
    return value


def save_state_tree(state: Any, tensors_path: Path | None, json_path: Path) -> None:
    """Write a nested state: its tensors to `tensors_path` (safetensors), the rest to `json_path`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(state, "", tensors)
    if tensors:
        if tensors_path is None:
            raise TypeError(f"{json_path.name}: the state holds tensors but has no tensor file")
        save_file(tensors, str(tensors_path))
    json_path.write_text(json.dumps(skeleton) + "\n")


def load_state_tree(tensors_path: Path | None, json_path: Path) -> Any:
    """Read what `save_state_tree` wrote (tensors on the CPU)."""
    from safetensors.torch import load_file

    skeleton = read_json(json_path)
    tensors = {}
    if tensors_path is not None and tensors_path.exists():
        try:
            tensors = load_file(str(tensors_path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{tensors_path.name}: unreadable ({err})") from None
    try:
        return _join_tensors(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as err:
        where = getattr(tensors_path, "name", "")
        raise CheckpointError(f"{json_path.name}: does not match {where} ({err})") from None


def save_rng(path: Path) -> None:
    """This process's Python, NumPy, torch and CUDA RNG states as safetensors (numbers in the metadata)."""
    from safetensors.torch import save_file

    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "python": torch.tensor(python_state, dtype=torch.int64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    # One metadata key: safetensors writes several in no fixed order, and the file must be byte-identical
    # for identical states.
    numbers = {"python": [version, gauss], "numpy": [kind, pos, has_gauss, cached]}
    save_file(tensors, str(path), metadata={"numbers": json.dumps(numbers)})


def load_rng(path: Path) -> None:
    """Restore what `save_rng` wrote; a missing or damaged file is a CheckpointError, never skipped."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        numbers = json.loads(metadata["numbers"])
        version, gauss = numbers["python"]
        kind, pos, has_gauss, cached = numbers["numpy"]
        python_state = (version, tuple(int(x) for x in tensors["python"].tolist()), gauss)
        numpy_state = (kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
        cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(tensors["torch"])
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    except Exception as err:  # safetensors' own errors, a missing key, a wrong shape: all the same to us
        raise CheckpointError(f"{path.name}: the RNG states cannot be restored ({err})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path.name}: unreadable ({err})") from None
