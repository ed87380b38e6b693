"""Fault injection for the pretraining tests, as `bert.hooks.TrainHooks` (never config fields).

Specs, usable in this process and on the command line of tests/pretrain_runner.py:
    SIGTERM@5        send SIGTERM (or SIGINT, SIGKILL) to this process in the middle of step 5, after the
                     first micro-batch's backward
    SIGTERM@eval:4   ... during the evaluation after step 4, after its first batch
    nan@3            process 0 writes NaN into its gradients at step 3 (the NaN guard must skip it)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from bert.hooks import Hooks, RecordExampleIds, TrainHooks


class SignalAt(TrainHooks):
    def __init__(self, sig: int, step: int, in_eval: bool = False) -> None:
        self.sig, self.step, self.in_eval, self.sent = sig, step, in_eval, False

    def _send(self) -> None:
        self.sent = True
        os.kill(os.getpid(), self.sig)

    def after_backward(self, step: int, micro_batch: int) -> None:
        if not self.in_eval and not self.sent and step == self.step and micro_batch == 0:
            self._send()

    def during_eval(self, step: int, batch_index: int) -> None:
        if self.in_eval and not self.sent and step == self.step:
            self._send()


class NanGradientsAt(TrainHooks):
    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank = step, rank

    def before_optimizer_step(self, step: int, model, rank: int) -> None:
        if step == self.step and rank == self.rank:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))


class StepClock(TrainHooks):
    """A clock that advances `seconds` at every reading: time budgets become deterministic."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds, self.readings = seconds, 0

    def clock(self) -> float:
        self.readings += 1
        return (self.readings - 1) * self.seconds


def fault(spec: str) -> TrainHooks:
    """A hook from a spec of the module docstring."""
    name, _, where = spec.partition("@")
    if name == "nan":
        return NanGradientsAt(int(where))
    kind, _, number = where.rpartition(":")
    return SignalAt(getattr(signal, name.upper()), int(number), in_eval=kind == "eval")


def hooks(faults: tuple[str, ...] = (), record_ids: Path | None = None, *extra: TrainHooks) -> TrainHooks:
    parts = [fault(spec) for spec in faults] + list(extra)
    if record_ids is not None:
        parts.append(RecordExampleIds(record_ids))
    return Hooks(*parts)
