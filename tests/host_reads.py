"""Test helpers that make a CPU behave like a GPU where it matters: a spy that counts host reads, and a
single-device stand-in for Accelerate that runs the training step on the `meta` device.

A host read (`.item()`, `.tolist()`, `bool(t)`, `float(t)`, `int(t)`, `nonzero`, boolean indexing, ...) of a
CUDA tensor makes the CPU wait until the GPU has caught up: the queue of kernels drains and the GPU idles
while the next batch is prepared. On the CPU the same read costs nothing, so these helpers make it visible:
`HostReads` counts them through a `TorchFunctionMode`, and the meta device (tensors with shapes and no data)
raises on every one of them and on any CPU tensor mixed into a device computation.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy"}
"""Tensor methods and functions that bring a value to the host (boolean indexing is checked apart)."""
DATA_DEPENDENT = {"masked_select", "unique", "unique_consecutive", "argwhere"}
"""Functions whose output shape depends on the values: the host must wait for them too."""


def _is_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostReads(TorchFunctionMode):
    """Counts host reads by the label `where` holds when they happen (set it from a training hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.where: Any = None
        self.counts: Counter = Counter()
        self.names: dict[Any, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        name = getattr(func, "__name__", "")
        read = name in READS or name in DATA_DEPENDENT
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_bool_index(args[1]):
            read = True
        if read:
            self.counts[self.where] += 1
            self.names.setdefault(self.where, []).append(name)
        return func(*args, **(kwargs or {}))


class OneDevice:
    """What the training step asks of Accelerate, for one process on any device (here: `meta`).

    `num_processes` > 1 imitates the collectives' arithmetic (an all-reduce of equal values), so that the
    step's multi-process code runs on the device too; nothing here reads a value."""

    def __init__(self, device: str | torch.device, num_processes: int = 1) -> None:
        self.device = torch.device(device)
        self.num_processes = num_processes
        self.process_index = 0
        self.is_main_process = True
        self.scaler = None
        self.sync_gradients = True

    def accumulate(self, model: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor * self.num_processes if reduction == "sum" else tensor
