"""One optimizer step of pretraining (`train_step` -> `StepResult`), the evaluation (`evaluate`), where the
run is (`RunState`: what a checkpoint holds beside the weights) and the figures between log lines (`Window`).

A step fetches nothing itself: it gets its k micro-batches, all-reduces their counts (the global
normalisers of bert/losses.py), runs forward and backward of each (gradients sync on the last), and takes
one optimizer step at the lr of the step, skipped on every process if any saw a non-finite value. Its sums,
the non-finite flag and the stop flag cross the processes in ONE collective (`reduce_named`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bert.batch import PretrainingBatch
from bert.config import PretrainConfig
from bert.hooks import TrainHooks
from bert.losses import gradient_factor, pretraining_loss
from bert.metrics import MetricTotals, example_stats
from bert.sampler import ShardedBatchSampler
from bert.training import all_reduce_sum, peak_rss_gb

if TYPE_CHECKING:
    from bert.budget import Budget
    from bert.optim import Schedule
    from bert.training import StopSignal


@dataclass
class TrainingParts:
    """What a step and an evaluation work with; built once by `Run.start`."""

    cfg: PretrainConfig
    accelerator: Any
    model: Any  # prepared by Accelerate (DDP-wrapped with several processes)
    optimizer: Any
    schedule: Schedule
    cross_entropy: Any  # the MLM loss's summed cross-entropy (None: the reference, F.cross_entropy)
    stop: StopSignal
    budget: Budget


# ------------------------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    """What one optimizer step did, summed over its micro-batches and all processes."""

    mlm_loss: float  # the global batch's MLM loss (sum over masked tokens / their count)
    nsp_loss: float
    mlm_correct: float
    nsp_correct: float
    masked: float  # MLM-labelled slots of the global batch
    nsp_labelled: float
    sequences: float
    tokens: float  # real (non-pad) tokens
    grad_norm: float
    lr: float
    finite: bool  # False: the optimizer step was skipped on every process
    stop_requested: bool  # a stop signal reached some process
    seconds: float  # the run's clock after this step's backward (the same on every process)
    progress: float  # the fraction of the budget used after this step

    @property
    def loss(self) -> float:
        return self.mlm_loss + self.nsp_loss


def train_step(
    parts: TrainingParts,
    step: int,
    batches: list[PretrainingBatch],
    hooks: TrainHooks,
    elapsed: Callable[[], float],
    tokens_before: int,
) -> StepResult:
    """Forward and backward of the step's micro-batches (gradients sync on the last), then one optimizer
    step at the lr of this step, skipped everywhere if any process saw a non-finite value.

    `elapsed()` is the run's clock, read once, after the backward: its mean over the processes is the time
    every process agrees on (the lr of a time budget, and when it is spent); `tokens_before` the global
    tokens of the steps before this one."""
    accelerator, model, optimizer = parts.accelerator, parts.model, parts.optimizer
    # `step`: the 0-based index of this step (hooks get the 1-based number, as in the logs)
    counts = reduce_named(
        accelerator,
        {
            "masked": sum(b.num_masked() for b in batches),
            "nsp_labelled": sum(b.num_nsp_labels() for b in batches),
            "sequences": sum(b.num_sequences for b in batches),
            "tokens": sum(b.num_real_tokens() for b in batches),
        },
    )
    factor = gradient_factor(accelerator.num_processes, len(batches))
    sums = {name: torch.zeros((), dtype=torch.float64, device=accelerator.device) for name in _SUMS}
    for i, batch in enumerate(batches):
        batch = batch.to(accelerator.device, non_blocking=True)
        with accelerator.accumulate(model):
            outputs = model(**batch.model_inputs())
            losses = pretraining_loss(
                outputs, batch, max(counts["masked"], 1.0), counts["nsp_labelled"], parts.cross_entropy
            )
            accelerator.backward(losses.loss * factor)
            for name in _SUMS:
                sums[name] += getattr(losses, name).detach().double()
            hooks.after_backward(step + 1, i)
    if not accelerator.sync_gradients:  # Accelerate's own counter must agree with ours
        raise RuntimeError(f"step {step + 1}: gradients were not synchronised on the last micro-batch")

    hooks.before_optimizer_step(step + 1, model, accelerator.process_index)
    norm = accelerator.clip_grad_norm_(model.parameters(), parts.cfg.optimizer.max_grad_norm or float("inf"))
    norm = torch.as_tensor(norm, device=accelerator.device).double()
    bad = ~(torch.isfinite(norm) & torch.isfinite(sums["mlm_loss"] + sums["nsp_loss"]))
    stop = torch.tensor(float(parts.stop.requested), dtype=torch.float64, device=accelerator.device)
    # One collective: the step's sums, the non-finite and stop flags, and the clock of every process.
    totals = reduce_named(accelerator, {**sums, "bad": bad.double(), "stop": stop, "seconds": elapsed()})
    seconds = totals["seconds"] / accelerator.num_processes
    budget = parts.budget
    progress = budget.progress(step + 1, seconds, tokens_before + int(counts["tokens"]))
    lr = parts.schedule.apply(optimizer, step, progress if budget.by_fraction else None)
    finite = totals["bad"] == 0
    if finite:
        optimizer.step()
    else:
        _back_off_scaler(accelerator)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        mlm_loss=totals["mlm_loss"],
        nsp_loss=totals["nsp_loss"],
        mlm_correct=totals["mlm_correct"],
        nsp_correct=totals["nsp_correct"],
        grad_norm=float(norm),
        lr=lr,
        finite=finite,
        stop_requested=totals["stop"] > 0,
        seconds=seconds,
        progress=progress,
        **counts,
    )


_SUMS = ("mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct")
"""The fields of PretrainingLosses summed over a step's micro-batches (shares of the global losses)."""


def reduce_named(accelerator: Any, values: dict[str, Any]) -> dict[str, float]:
    """Sum named numbers (floats or 0-d tensors) over processes in ONE collective; returns them by name."""
    names = list(values)
    stacked = torch.stack(
        [torch.as_tensor(values[n], dtype=torch.float64, device=accelerator.device) for n in names]
    )
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return dict(zip(names, stacked.tolist()))


def _back_off_scaler(accelerator: Any) -> None:
    """A skipped step with fp16: back the loss scale off, as the scaler itself does on an overflow."""
    scaler = accelerator.scaler
    if scaler is not None:
        # update(new_scale) also clears the per-optimizer "already unscaled" state for the next step
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


# ----------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    metrics: dict[str, float]
    interrupted: bool  # a stop signal came during it (the metrics are then partial and not logged)


@torch.no_grad()
def evaluate(parts: TrainingParts, loader: Any, step: int, hooks: TrainHooks) -> Evaluation:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy on the validation subset.

    Each batch's per-sequence sums go through `gather_for_metrics` (which drops the padding duplicates of
    the last batch); the stop flag is all-reduced after every batch so all processes leave together.
    """
    accelerator, model = parts.accelerator, parts.model
    model.eval()
    totals = MetricTotals()
    interrupted = False
    for i, batch in enumerate(loader):
        outputs = model(**batch.model_inputs())
        stats = example_stats(
            outputs.prediction_logits,
            batch.masked_lm_labels,
            outputs.seq_relationship_logits,
            batch.next_sentence_label,
        )
        totals.add(accelerator.gather_for_metrics(stats))
        hooks.during_eval(step, i)
        if all_reduce_sum(accelerator, [float(parts.stop.requested)])[0] > 0:
            interrupted = True
            break
    model.train()
    return Evaluation(totals.result(), interrupted)


# ------------------------------------------------------------------------------------- state and figures


@dataclass
class RunState:
    """Where the run is: what a checkpoint's meta.json holds beside the weights."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next micro-batch of the epoch (per process)
    counters: dict[str, float] = field(
        default_factory=lambda: {"skipped_steps": 0, "tokens": 0, "samples": 0, "train_seconds": 0.0}
    )
    nonfinite_streak: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)

    def advance(self, result: StepResult, sampler: ShardedBatchSampler, micro_batches: int) -> None:
        self.step += 1
        for _ in range(micro_batches):
            self.epoch, self.index = sampler.advance(self.epoch, self.index)
        self.counters["tokens"] += int(result.tokens)
        self.counters["samples"] += int(result.sequences)
        self.counters["train_seconds"] = result.seconds
        if result.finite:
            self.nonfinite_streak = 0
        else:
            self.counters["skipped_steps"] += 1
            self.nonfinite_streak += 1


class Window:
    """Sums of the training figures since the last log line."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        self.start = time.time()

    def add(self, result: StepResult) -> None:
        self.results.append(result)

    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.results) / max(time.time() - self.start, 1e-9)

    def flush(self, parts: TrainingParts, counters: dict[str, int], lr: float) -> dict[str, float]:
        seconds = max(time.time() - self.start, 1e-9)
        results, steps = self.results, max(len(self.results), 1)
        total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
        logs = {
            "loss": (total("mlm_loss") + total("nsp_loss")) / steps,
            "mlm_loss": total("mlm_loss") / steps,
            "mlm_accuracy": total("mlm_correct") / max(total("masked"), 1.0),
            "lr": lr,
            "grad_norm": results[-1].grad_norm if results else 0.0,
            "tokens_per_s": total("tokens") / seconds,
            "samples_per_s": total("sequences") / seconds,
            "skipped_steps": counters["skipped_steps"],
            "tokens": counters["tokens"],
            "step_seconds": seconds / steps,
        }
        if results and parts.budget.by_fraction:
            logs["budget_used"] = results[-1].progress
            logs.update(parts.budget.left(results[-1].seconds, int(counters["tokens"])))
        if parts.cfg.data.nsp:
            logs["nsp_loss"] = total("nsp_loss") / steps
            logs["nsp_accuracy"] = total("nsp_correct") / max(total("nsp_labelled"), 1.0)
        device = parts.accelerator.device
        if device.type == "cuda":
            logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            mfu = _mfu(parts.cfg, logs["tokens_per_s"] / parts.accelerator.num_processes, device)
            if mfu is not None:
                logs["mfu"] = mfu
        else:
            logs["peak_rss_gb"] = peak_rss_gb()
        self.results, self.start = [], time.time()
        return logs


def _mfu(cfg: PretrainConfig, tokens_per_s_per_device: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak (None when unknown)."""
    from bert.model.flops import mfu, training_flops_per_token

    flops = training_flops_per_token(cfg.model, cfg.data.max_seq_length, cfg.data.masked_lm_prob)
    dtype = cfg.train.mixed_precision if cfg.train.mixed_precision != "no" else "fp32"
    return mfu(tokens_per_s_per_device * flops, device, dtype)
