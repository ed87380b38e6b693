"""One optimizer step of pretraining (`train_step` -> `StepResult`), the agreement between processes
(`Window.agree` -> `Agreed`), the evaluation (`evaluate`), where the run is (`RunState`: what a checkpoint
holds beside the weights) and how far its budget is used (`Pace`).

A step never waits for the device. Its counts (the global normalisers of bert/losses.py) come from the
collator's CPU tensors, summed over processes on the device when there are several; forward and backward run
for each micro-batch (gradients sync on the last); the clipped gradient norm and the losses decide on the
device whether the step is skipped (the same decision on every process: the flag is all-reduced there), and
the optimizer skips itself through its `found_inf` (torch's fused AdamW, bert.optim.Lamb). Losses, counts,
the norm and the skip flags stay on the device until the next agreement point (every `train.log_every`
steps, and at evaluation, checkpoint and budget steps), where ONE collective sums them with the stop flag
and every process's clock and ONE transfer reads them. Between agreement points a run of several processes
extrapolates its time and tokens from the last window (the same numbers everywhere); one process reads its
own clock at every step, which costs no device read.

Skipping on the device needs an optimizer that takes `found_inf`; with fp16 (the grad scaler) or another
optimizer the step reads the flag on the host, as before (`TrainingParts.skip_on_device`).
"""

from __future__ import annotations

import dataclasses
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
from bert.training import peak_rss_gb, rss_gb

if TYPE_CHECKING:
    from bert.budget import Budget
    from bert.optim import Schedule
    from bert.training import StopSignal


# --------------------------------------------------------------------------------------------- the pace


class Pace:
    """How far the run is, as every process agrees: optimizer steps, seconds of its clock, global tokens.

    One process: exact at every step (its clock and its token counts are host values). Several: exact at
    each agreement point; between two, seconds and tokens are extrapolated from the rates of the last
    window, numbers every process computes alike, so the lr of a time or token budget stays identical on
    every replica without a collective per step."""

    def __init__(self, exact: bool, step: int = 0, seconds: float = 0.0, tokens: float = 0.0) -> None:
        self.exact = exact
        self.step, self.seconds, self.tokens = step, seconds, tokens
        self.seconds_per_step = self.tokens_per_step = 0.0

    def estimate(self, step: int) -> tuple[float, float]:
        """(seconds, tokens) after `step` steps."""
        ahead = step - self.step
        return self.seconds + ahead * self.seconds_per_step, self.tokens + ahead * self.tokens_per_step

    def agree(self, step: int, seconds: float, tokens: float) -> None:
        """The exact figures after `step` steps."""
        ahead = step - self.step
        if ahead > 0:
            self.seconds_per_step = (seconds - self.seconds) / ahead
            self.tokens_per_step = (tokens - self.tokens) / ahead
        self.step, self.seconds, self.tokens = step, seconds, tokens


@dataclass
class TrainingParts:
    """What a step and an evaluation work with; built once by `Run.start`."""

    cfg: PretrainConfig
    accelerator: Any
    model: Any  # prepared by Accelerate (DDP-wrapped with several processes)
    optimizer: Any
    schedule: Schedule
    loss: Any  # the pretraining loss, bound at the fast-path seam (FastPaths.pretraining_loss); None: the reference
    stop: StopSignal
    budget: Budget
    forward_loss: Callable[..., Any] | None = None
    """(device batch, mlm normaliser, nsp normaliser) -> PretrainingLosses: `forward_functions`'."""
    forward_stats: Callable[..., Any] | None = None
    """(device batch) -> the evaluation's per-sequence sums (bert.metrics.example_stats)."""
    pace: Pace = field(default_factory=lambda: Pace(exact=True))
    skip_on_device: bool = False
    """The optimizer skips a non-finite step itself (`found_inf`); False: the flag is read on the host."""

    def __post_init__(self) -> None:
        if self.forward_loss is None or self.forward_stats is None:
            self.forward_loss, self.forward_stats = forward_functions(self.model, self.loss, None)


def forward_functions(model: Any, loss: Any, train_cfg: Any) -> tuple[Callable, Callable]:
    """(forward_loss, forward_stats): the model with the loss (`loss`: FastPaths.pretraining_loss()'s, None:
    the reference), and the model with the evaluation's sums.

    With `train.compile` each is ONE torch.compile region, model and loss together (the loss's fp32
    log-softmax fuses with the head); with static shapes (bert.training.use_static_shapes) each compiles once.
    The normalisers are device tensors, never Python numbers that a compiled function would specialise on.
    On the unpadded path the number of real tokens changes every batch, so each encoder layer is compiled
    instead, with that dimension dynamic (one graph for every batch); the layout (from the collator's host
    lengths), the embeddings and the heads run eagerly around them.
    """

    loss = loss or pretraining_loss

    def forward_loss(batch: PretrainingBatch, mlm_normalizer: Any, nsp_normalizer: Any) -> Any:
        outputs = model(**batch.model_inputs())
        return loss(outputs, batch, mlm_normalizer, nsp_normalizer)

    def forward_stats(batch: PretrainingBatch) -> dict[str, torch.Tensor]:
        outputs = model(**batch.model_inputs())
        return example_stats(
            outputs.prediction_logits,
            batch.masked_lm_labels,
            outputs.seq_relationship_logits,
            batch.next_sentence_label,
        )

    if train_cfg is not None and train_cfg.compile:
        options = {"backend": train_cfg.compile_backend}
        if train_cfg.compile_mode:
            options["mode"] = train_cfg.compile_mode
        if not compiles_whole_forward(model, train_cfg):
            from bert.model.layers import BertLayer

            for layer in [m for m in model.modules() if isinstance(m, BertLayer)]:
                layer.compile(dynamic=True, **options)
            return forward_loss, forward_stats
        return torch.compile(forward_loss, **options), torch.compile(forward_stats, **options)
    return forward_loss, forward_stats


def compiles_whole_forward(model: Any, train_cfg: Any) -> bool:
    """Whether `train.compile` compiles the forward and the loss as one region (every path but unpadded,
    whose layers are compiled one by one: `forward_functions`)."""
    config = getattr(getattr(model, "module", model), "config", None)
    return bool(train_cfg.compile) and getattr(config, "attn_implementation", None) != "unpadded"


def device_batch(batch: PretrainingBatch, device: torch.device, compiled: bool = False) -> PretrainingBatch:
    """The batch on the device without the fields the model does not read; `compiled` (the whole forward is
    one compiled region): without the host lengths too (it would guard on, and recompile for, every new
    tuple of lengths)."""
    moved = batch.to(device, non_blocking=True)
    lengths = None if compiled else batch.seq_lengths
    return dataclasses.replace(moved, example_ids=None, host_counts=None, seq_lengths=lengths)


def skips_on_device(accelerator: Any, optimizer: Any) -> bool:
    """Whether a non-finite step can be skipped without a host read: no grad scaler (fp16 has its own
    skipping), and an optimizer that honours `found_inf` (bert.optim.Lamb, torch's fused AdamW)."""
    from bert.optim import Lamb

    inner = getattr(optimizer, "optimizer", optimizer)
    if getattr(accelerator, "scaler", None) is not None:
        return False
    return isinstance(inner, Lamb) or bool(inner.defaults.get("fused"))


# ------------------------------------------------------------------------------------------- one step


STEP_SUMS = ("mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct")
"""The fields of PretrainingLosses summed over a step's micro-batches (shares of the global losses)."""

COUNTS = ("masked", "nsp_labelled", "sequences", "tokens")
"""What a step counts on the host from its CPU batches: labelled MLM slots, NSP labels, sequences, real
tokens, of this process."""


@dataclass
class StepResult:
    """What one optimizer step did. The tensors stay on the device; nothing here was read back."""

    shares: torch.Tensor  # (4,) float64: this process's shares of STEP_SUMS (global losses when summed)
    counts: tuple[int, int, int, int]  # this process's COUNTS (host)
    grad_norm: torch.Tensor  # () the clipped-before norm of the synchronised gradients
    skipped: torch.Tensor  # () bool, the same on every process: the optimizer step did nothing
    lr: float
    progress: float  # the fraction of the budget used after this step, as the lr schedule saw it


def train_step(
    parts: TrainingParts,
    step: int,
    batches: list[PretrainingBatch],
    hooks: TrainHooks,
    elapsed: Callable[[], float],
) -> StepResult:
    """Forward and backward of the step's micro-batches (gradients sync on the last), then one optimizer
    step at the lr of this step, skipped on every process if any saw a non-finite value (module docstring).

    `step` is the 0-based index of this step (hooks get the 1-based number, as in the logs); `elapsed()` is
    the run's clock, read once after the backward when the run has one process."""
    accelerator, model, optimizer = parts.accelerator, parts.model, parts.optimizer
    device = accelerator.device
    local = [
        sum(b.num_masked() for b in batches),  # host: the collator's CPU tensors
        sum(b.num_nsp_labels() for b in batches),
        sum(b.num_sequences for b in batches),
        sum(b.num_real_tokens() for b in batches),
    ]
    mlm_normalizer, nsp_normalizer = _normalizers(accelerator, local[0], local[1])
    factor = gradient_factor(accelerator.num_processes, len(batches))
    shares = torch.zeros(len(STEP_SUMS), dtype=torch.float64, device=device)
    compiled = parts.cfg.train.compile
    whole = compiles_whole_forward(model, parts.cfg.train)
    for i, batch in enumerate(batches):
        if compiled:  # a new iteration for CUDA graphs (compile_mode reduce-overhead); otherwise nothing
            torch.compiler.cudagraph_mark_step_begin()
        with accelerator.accumulate(model):
            inputs = device_batch(batch, device, whole)
            losses = parts.forward_loss(inputs, mlm_normalizer, nsp_normalizer)
            accelerator.backward(losses.loss * factor)
            shares += torch.stack([getattr(losses, name).detach().double() for name in STEP_SUMS])
            hooks.after_backward(step + 1, i)
    if not accelerator.sync_gradients:  # Accelerate's own counter must agree with ours
        raise RuntimeError(f"step {step + 1}: gradients were not synchronised on the last micro-batch")

    hooks.before_optimizer_step(step + 1, model, accelerator.process_index)
    norm = accelerator.clip_grad_norm_(model.parameters(), parts.cfg.optimizer.max_grad_norm or float("inf"))
    norm = torch.as_tensor(norm, device=device).detach().double()
    bad = (~(torch.isfinite(norm) & torch.isfinite(shares[0] + shares[1]))).double()
    if accelerator.num_processes > 1:  # on the device: every process takes the same decision, unread
        bad = accelerator.reduce(bad, reduction="sum")
    skipped = bad > 0

    budget, pace = parts.budget, parts.pace
    if pace.exact:
        pace.agree(step + 1, elapsed(), pace.tokens + local[3])
    progress = budget.progress(step + 1, *pace.estimate(step + 1))
    lr = parts.schedule.apply(optimizer, step, progress if budget.by_fraction else None)
    if parts.skip_on_device:
        getattr(optimizer, "optimizer", optimizer).found_inf = skipped.float()
        optimizer.step()
    elif not bool(skipped):  # host read: fp16's scaler, or an optimizer without found_inf
        optimizer.step()
    else:
        _back_off_scaler(accelerator)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(shares, tuple(local), norm, skipped, lr, progress)


def _normalizers(accelerator: Any, masked: int, nsp_labelled: int) -> tuple[Any, Any]:
    """The global batch's labelled MLM slots (at least 1) and NSP labels: host numbers with one process;
    with several, sums on the device (a collective the host does not wait for)."""
    if accelerator.num_processes == 1:
        return max(float(masked), 1.0), float(nsp_labelled)
    counts = torch.tensor([masked, nsp_labelled], dtype=torch.float32).to(
        accelerator.device, non_blocking=True
    )
    counts = accelerator.reduce(counts, reduction="sum")
    # an NSP normaliser of 0 means no NSP labels anywhere: their summed loss is 0, and 0 / 1 stays 0
    return counts[0].clamp(min=1.0), counts[1].clamp(min=1.0)


def _back_off_scaler(accelerator: Any) -> None:
    """A skipped step with fp16: back the loss scale off, as the scaler itself does on an overflow."""
    scaler = accelerator.scaler
    if scaler is not None:
        # update(new_scale) also clears the per-optimizer "already unscaled" state for the next step
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


# -------------------------------------------------------------------------------- agreement and logging


@dataclass
class Agreed:
    """What every process read at an agreement point about the steps since the previous one."""

    sums: dict[str, float]  # STEP_SUMS and COUNTS over the steps and processes
    skipped: list[bool]  # per step
    grad_norm: float  # of the last step
    stop: bool  # a stop signal reached some process
    seconds: float  # the run's clock (the mean over processes)
    steps: int


class Window:
    """The steps since the last agreement (on the device) and the agreed figures since the last log line."""

    def __init__(self, parts: TrainingParts) -> None:
        self.parts = parts
        self.pending: list[StepResult] = []
        self.agreed: list[Agreed] = []
        self.start = time.time()
        self.local_tokens = 0
        self.last_loss = float("nan")

    def add(self, result: StepResult) -> None:
        self.pending.append(result)
        self.local_tokens += result.counts[3]

    def tokens_per_s(self) -> float:
        """Global tokens per second since the last log line (the local count times the processes)."""
        return self.local_tokens * self.parts.accelerator.num_processes / max(time.time() - self.start, 1e-9)

    def agree(self, elapsed: Callable[[], float], stop: bool) -> Agreed:
        """ONE collective over the pending steps' sums, the stop flag and the clock; ONE read."""
        parts, pending = self.parts, self.pending
        accelerator = parts.accelerator
        device = accelerator.device
        several = accelerator.num_processes > 1
        counts = torch.tensor(
            [sum(r.counts[i] for r in pending) for i in range(len(COUNTS))], dtype=torch.float64
        )
        clock = elapsed() if several else parts.pace.seconds
        host = torch.cat((counts, torch.tensor([float(stop), clock], dtype=torch.float64)))
        shares = sum(
            (r.shares for r in pending), torch.zeros(len(STEP_SUMS), dtype=torch.float64, device=device)
        )
        summed = torch.cat((shares, host.to(device)))
        if several:
            summed = accelerator.reduce(summed, reduction="sum")
        tail = [r.skipped.double().reshape(1) for r in pending]
        tail.append(
            pending[-1].grad_norm.reshape(1)
            if pending
            else torch.zeros(1, dtype=torch.float64, device=device)
        )
        values = torch.cat((summed, *tail)).tolist()  # the one read
        n = len(STEP_SUMS) + len(COUNTS)
        sums = dict(zip(STEP_SUMS + COUNTS, values[:n]))
        agreed = Agreed(
            sums=sums,
            skipped=[v > 0 for v in values[n + 2 : n + 2 + len(pending)]],
            grad_norm=values[-1],
            stop=values[n] > 0,
            seconds=values[n + 1] / accelerator.num_processes,
            steps=len(pending),
        )
        self.pending = []
        self.agreed.append(agreed)
        if agreed.steps:
            self.last_loss = (sums["mlm_loss"] + sums["nsp_loss"]) / agreed.steps
        return agreed

    def flush(self, counters: dict[str, float], lr: float, progress: float) -> dict[str, float]:
        """The train/ figures since the last log line (call right after `agree`)."""
        parts = self.parts
        seconds = max(time.time() - self.start, 1e-9)
        agreed, steps = self.agreed, max(sum(a.steps for a in self.agreed), 1)
        total = lambda name: sum(a.sums[name] for a in agreed)  # noqa: E731
        logs = {
            "loss": (total("mlm_loss") + total("nsp_loss")) / steps,
            "mlm_loss": total("mlm_loss") / steps,
            "mlm_accuracy": total("mlm_correct") / max(total("masked"), 1.0),
            "lr": lr,
            "grad_norm": agreed[-1].grad_norm if agreed else 0.0,
            "tokens_per_s": total("tokens") / seconds,
            "samples_per_s": total("sequences") / seconds,
            "skipped_steps": counters["skipped_steps"],
            "tokens": counters["tokens"],
            "step_seconds": seconds / steps,
        }
        if parts.budget.by_fraction:
            logs["budget_used"] = progress
            logs.update(parts.budget.left(counters["train_seconds"], int(counters["tokens"])))
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
            logs["rss_gb"] = rss_gb()
        self.agreed, self.start, self.local_tokens = [], time.time(), 0
        return logs


def _mfu(cfg: PretrainConfig, tokens_per_s_per_device: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak (None when unknown)."""
    from bert.model.flops import mfu, training_flops_per_token

    flops = training_flops_per_token(cfg.model, cfg.data.max_seq_length, cfg.data.masked_lm_prob)
    dtype = cfg.train.mixed_precision if cfg.train.mixed_precision not in ("no", None) else "fp32"
    return mfu(tokens_per_s_per_device * flops, device, dtype)


# ----------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    metrics: dict[str, float]
    interrupted: bool  # a stop signal came during it
    complete: bool  # every batch was scored (one process leaves at once on a stop; several finish first)


@torch.no_grad()
def evaluate(parts: TrainingParts, loader: Any, step: int, hooks: TrainHooks) -> Evaluation:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy on the validation subset.

    Each batch's per-sequence sums go through `gather_for_metrics` (which drops the padding duplicates of
    the last batch) and are totalled on the device: the sums are read once, at the end. One process stops
    at the batch a stop signal arrives (a host flag); several agree on it in that final read, after the
    last batch, so that they leave together.
    """
    accelerator, model = parts.accelerator, parts.model
    several = accelerator.num_processes > 1
    whole = compiles_whole_forward(model, parts.cfg.train)
    model.eval()
    totals = MetricTotals()
    complete = True
    for i, batch in enumerate(loader):
        stats = parts.forward_stats(device_batch(batch, accelerator.device, whole))
        totals.add(accelerator.gather_for_metrics(stats))
        hooks.during_eval(step, i)
        if not several and parts.stop.requested:
            complete = False
            break
    stop = torch.tensor([float(parts.stop.requested)], dtype=torch.float64, device=accelerator.device)
    if several:
        stop = accelerator.reduce(stop, reduction="sum")
    metrics, (stopped,) = totals.result(extra=stop)
    model.train()
    return Evaluation(metrics, interrupted=stopped > 0, complete=complete)


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

    def advance(self, sampler: ShardedBatchSampler, micro_batches: int) -> None:
        """One optimizer step was taken over `micro_batches` micro-batches of the sampler."""
        self.step += 1
        for _ in range(micro_batches):
            self.epoch, self.index = sampler.advance(self.epoch, self.index)

    def absorb(self, agreed: Agreed) -> list[int]:
        """Add an agreement's figures to the counters; returns the steps (1-based) that were skipped."""
        self.counters["tokens"] += int(agreed.sums["tokens"])
        self.counters["samples"] += int(agreed.sums["sequences"])
        self.counters["train_seconds"] = agreed.seconds
        first = self.step - agreed.steps + 1
        skipped = []
        for offset, was_skipped in enumerate(agreed.skipped):
            if was_skipped:
                skipped.append(first + offset)
                self.counters["skipped_steps"] += 1
                self.nonfinite_streak += 1
            else:
                self.nonfinite_streak = 0
        return skipped
