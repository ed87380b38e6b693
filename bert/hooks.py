"""Hooks into the training loops: where tests inject faults and audits watch, without config fields.

`TrainHooks` has one no-op method per point of the pretraining loop that a test needs; a test passes a
subclass to `bert.pretrain.pretrain(cfg, hooks=...)` (or to `bert.cli.main(argv, hooks=...)`). The user-facing
config knows nothing of them, and the hot loop calls plain methods that do nothing by default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class TrainHooks:
    """Every method is called at the point its name says; the default does nothing."""

    def on_batches(self, step: int, batches: list[Any], rank: int) -> None:
        """The micro-batches of optimizer step `step` (1-based) were fetched, before any forward."""

    def after_backward(self, step: int, micro_batch: int) -> None:
        """A micro-batch's backward of step `step` is done."""

    def before_optimizer_step(self, step: int, model: Any, rank: int) -> None:
        """Gradients of step `step` are complete (synchronised), before clipping and the NaN check."""

    def during_eval(self, step: int, batch_index: int) -> None:
        """An evaluation batch after step `step` was scored."""

    def clock(self) -> float:
        """Seconds of the run's clock, read once at the start of a run and once per step (a test replaces
        it to make time budgets deterministic)."""
        return time.monotonic()


class RecordExampleIds(TrainHooks):
    """An audit of the data order: appends each step's (epoch, index) pairs to `folder/example_ids_rank<r>.jsonl`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, rank: int) -> Path:
        return self.folder / f"example_ids_rank{rank}.jsonl"

    def on_batches(self, step: int, batches: list[Any], rank: int) -> None:
        pairs = [pair for batch in batches for pair in batch.example_ids.tolist()]
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path(rank).open("a") as handle:
            handle.write(json.dumps({"step": step, "examples": pairs}) + "\n")


class Hooks(TrainHooks):
    """Several hooks called in turn."""

    def __init__(self, *hooks: TrainHooks) -> None:
        self.hooks = hooks

    def on_batches(self, step: int, batches: list[Any], rank: int) -> None:
        for hook in self.hooks:
            hook.on_batches(step, batches, rank)

    def after_backward(self, step: int, micro_batch: int) -> None:
        for hook in self.hooks:
            hook.after_backward(step, micro_batch)

    def before_optimizer_step(self, step: int, model: Any, rank: int) -> None:
        for hook in self.hooks:
            hook.before_optimizer_step(step, model, rank)

    def during_eval(self, step: int, batch_index: int) -> None:
        for hook in self.hooks:
            hook.during_eval(step, batch_index)

    def clock(self) -> float:
        clocks = [h for h in self.hooks if type(h).clock is not TrainHooks.clock]
        return clocks[0].clock() if clocks else super().clock()
