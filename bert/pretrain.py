"""`bert pretrain`: the MLM + NSP pretraining loop, on one CPU, one GPU, or many GPUs and nodes.

`pretrain(cfg)` sets a run up (`Run.start`), runs `train`, the loop, which reads top to bottom over named
results (`train_step` -> `StepResult`, `evaluate` -> metrics), and tears the run down in one place
(`Run.close`). The same code runs under `accelerate launch` and `torchrun`.

Loss normalisation (bert/losses.py). The MLM loss of an optimizer step is the sum of token losses over ALL
masked tokens of the global batch (every micro-batch of the step, on every process) divided by their count;
the NSP loss the same over sequences. The step's micro-batches are fetched first and their counts
all-reduced; each micro-batch then backpropagates its share of the global losses, so one step of batch B
equals k accumulated steps of B / k, and N processes equal one.

Fault tolerance (bert/checkpoint.py). A checkpoint every `save_every` steps; the run resumes from the newest
checkpoint that verifies when the same command is re-run: weights, optimizer, grad scaler, every process's
RNG, the data position (bert.sampler.ShardedBatchSampler starts there, no replay), the dashboard run, and
metrics.jsonl cut back to what that checkpoint had seen. SIGTERM/SIGINT set a flag, all-reduced once per step
(and per evaluation batch), so every process finishes the step, saves the same checkpoint and exits 0. A
non-finite loss or gradient norm on any process skips the optimizer step everywhere; no checkpoint is saved
while such steps continue, and too many in a row stop the run. One run per output folder (a lock).

On resume, optimizer hyper-parameters, the schedule and train.max_steps follow the config given now (the lr
of each step is a function of it, bert.optim.Schedule); changed values are named in one line. What the saved
weights or data position depend on (model shape, tokenizer, batch size, processes) must not change.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bert import checkpoint as ckpt
from bert import fs
from bert.batch import PretrainingBatch
from bert.config import PretrainConfig, flatten, save_config, to_dict
from bert.errors import UserError
from bert.hooks import TrainHooks
from bert.losses import gradient_factor, pretraining_loss
from bert.metrics import MetricTotals, example_stats
from bert.optim import Schedule, apply_hyperparameters, build_optimizer
from bert.progress import Progress
from bert.sampler import EpochDataset, ShardedBatchSampler
from bert.tracking import MetricsFile, hparams, new_run_id, tracker_setup
from bert.training import (
    StopSignal,
    all_reduce_sum,
    broadcast_token,
    make_accelerator,
    prepare_model,
    print0,
)


def pretrain(cfg: PretrainConfig, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` for `cfg.train.max_steps` steps; returns the final figures."""
    run = Run.start(cfg)
    try:
        return train(run, hooks or TrainHooks())
    finally:
        run.close()


def train(run: Run, hooks: TrainHooks) -> dict[str, Any]:
    """The loop: fetch a step's batches, step, log, evaluate, save; then the final evaluation and export."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    k, max_steps = cfg.train.gradient_accumulation_steps, cfg.train.max_steps
    window = Window()
    if cfg.train.eval_at_start and state.step == 0:
        run.log("eval", evaluate(run, hooks).metrics)
    while state.step < max_steps:
        batches = [next(run.batches) for _ in range(k)]
        hooks.on_batches(state.step + 1, batches, accelerator.process_index)
        result = train_step(run, batches, hooks)
        state.advance(result, run.sampler, k)
        window.add(result)
        run.progress.update(1, loss=result.loss, tok_s=window.tokens_per_s())

        if not result.finite:
            run.print(f"step {state.step}: non-finite loss or gradient norm on some process, step skipped")
            if state.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                latest = ckpt.latest_checkpoint(run.run_dir)
                raise UserError(
                    f"stopping at step {state.step}: {state.nonfinite_streak} consecutive steps had a "
                    f"non-finite loss or gradient norm (train.max_nonfinite_steps="
                    f"{cfg.train.max_nonfinite_steps}); latest healthy checkpoint: {latest or 'none'}; "
                    "try a lower optimizer.lr or more warmup",
                    exit_code=1,
                )
        if state.step % cfg.train.log_every == 0 or state.step == max_steps:
            run.log("train", window.flush(run, result.lr))

        stop = result.stop_requested
        if not stop and cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
            evaluation = evaluate(run, hooks)
            stop = evaluation.interrupted
            if not stop:
                run.log("eval", evaluation.metrics)
        if stop:
            saved = run.save()
            where = f"saved step {state.step} to {saved}" if saved else "nothing saved"
            run.print(f"stop signal: {where}; exiting 0")
            return run.result(stopped=True)
        if cfg.train.save_every and state.step % cfg.train.save_every == 0:
            run.save()

    if not run.evaluated_at(state.step):
        run.log("eval", evaluate(run, hooks).metrics)
    if not ckpt.step_folder(run.run_dir, state.step).exists():
        run.save()
    run.export()
    return run.result(stopped=False)


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

    @property
    def loss(self) -> float:
        return self.mlm_loss + self.nsp_loss


def train_step(run: Run, batches: list[PretrainingBatch], hooks: TrainHooks) -> StepResult:
    """Forward and backward of the step's micro-batches (gradients sync on the last), then one optimizer
    step at the lr of this step, skipped everywhere if any process saw a non-finite value."""
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    step = run.state.step  # 0-based index of this step
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
                outputs, batch, max(counts["masked"], 1.0), counts["nsp_labelled"], run.cross_entropy
            )
            accelerator.backward(losses.loss * factor)
            for name in _SUMS:
                sums[name] += getattr(losses, name).detach().double()
            hooks.after_backward(step + 1, i)
    if not accelerator.sync_gradients:  # Accelerate's own counter must agree with ours
        raise RuntimeError(f"step {step + 1}: gradients were not synchronised on the last micro-batch")

    hooks.before_optimizer_step(step + 1, model, accelerator.process_index)
    norm = accelerator.clip_grad_norm_(model.parameters(), run.cfg.optimizer.max_grad_norm or float("inf"))
    norm = torch.as_tensor(norm, device=accelerator.device).double()
    bad = ~(torch.isfinite(norm) & torch.isfinite(sums["mlm_loss"] + sums["nsp_loss"]))
    stop = torch.tensor(float(run.stop.requested), dtype=torch.float64, device=accelerator.device)
    # One collective: the step's sums, the non-finite flag and the stop flag of every process.
    totals = reduce_named(accelerator, {**sums, "bad": bad.double(), "stop": stop})
    lr = run.schedule.apply(optimizer, step)
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
def evaluate(run: Run, hooks: TrainHooks) -> Evaluation:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy on the validation subset.

    Each batch's per-sequence sums go through `gather_for_metrics` (which drops the padding duplicates of
    the last batch); the stop flag is all-reduced after every batch so all processes leave together.
    """
    accelerator, model = run.accelerator, run.model
    model.eval()
    totals = MetricTotals()
    interrupted = False
    for i, batch in enumerate(run.eval_loader):
        outputs = model(**batch.model_inputs())
        stats = example_stats(
            outputs.prediction_logits,
            batch.masked_lm_labels,
            outputs.seq_relationship_logits,
            batch.next_sentence_label,
        )
        totals.add(accelerator.gather_for_metrics(stats))
        hooks.during_eval(run.state.step, i)
        if all_reduce_sum(accelerator, [float(run.stop.requested)])[0] > 0:
            interrupted = True
            break
    model.train()
    return Evaluation(totals.result(), interrupted)


# ------------------------------------------------------------------------------------------ run state


@dataclass
class RunState:
    """Where the run is: what a checkpoint's meta.json holds beside the weights."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next micro-batch of the epoch (per process)
    counters: dict[str, int] = field(default_factory=lambda: {"skipped_steps": 0, "tokens": 0, "samples": 0})
    nonfinite_streak: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)

    def advance(self, result: StepResult, sampler: ShardedBatchSampler, micro_batches: int) -> None:
        self.step += 1
        for _ in range(micro_batches):
            self.epoch, self.index = sampler.advance(self.epoch, self.index)
        self.counters["tokens"] += int(result.tokens)
        self.counters["samples"] += int(result.sequences)
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

    def flush(self, run: Run, lr: float) -> dict[str, float]:
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
            "skipped_steps": run.state.counters["skipped_steps"],
            "tokens": run.state.counters["tokens"],
        }
        if run.cfg.data.nsp:
            logs["nsp_loss"] = total("nsp_loss") / steps
            logs["nsp_accuracy"] = total("nsp_correct") / max(total("nsp_labelled"), 1.0)
        device = run.accelerator.device
        if device.type == "cuda":
            logs["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            mfu = _mfu(run.cfg, logs["tokens_per_s"] / run.accelerator.num_processes, device)
            if mfu is not None:
                logs["mfu"] = mfu
        else:
            logs["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.results, self.start = [], time.time()
        return logs


# ------------------------------------------------------------------------------------------------ the run


class Run:
    """Everything one pretraining run holds, set up by `start` and torn down by `close`."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.train.output_dir)
        self.state = RunState()
        self.history: list[dict[str, Any]] = []
        self.lock: fs.RunLock | None = None
        self.stop = StopSignal()
        self.accelerator: Any = None
        self.progress: Progress | None = None
        self.trackers_started = False

    @classmethod
    def start(cls, cfg: PretrainConfig) -> Run:
        """Lock the run folder, prepare the data, build the model, resume if a checkpoint verifies."""
        import logging

        from accelerate.utils import set_seed

        run = cls(cfg)
        try:
            # Accelerate warns at every save that the tied MLM decoder is stored once: expected
            logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
            # the trackers to start (wandb's mode decided now); their run id comes with the checkpoint
            log_with, _ = tracker_setup(cfg.logging, "", "", str(run.run_dir))
            run.accelerator = make_accelerator(
                cfg.train.mixed_precision,
                run.run_dir,
                log_with=log_with,
                gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            )
            accelerator = run.accelerator
            run.main = accelerator.is_main_process
            if run.main:
                run.lock = fs.RunLock(run.run_dir).acquire()
            run.checkpointer = ckpt.Checkpointer(
                run.run_dir, accelerator, broadcast_token(accelerator, fs.unique_token()), cfg.train.keep_last
            )
            set_seed(cfg.train.seed)  # Python, NumPy and torch: the same initial weights on every process
            run._data()
            run._model()
            run._resume()
            run._logging()
        except BaseException:
            run.close()
            raise
        return run

    def _data(self) -> None:
        """Training and evaluation batches: `bert prepare`'s folder, or prepared now (main process first)."""
        from bert.data.collator import build_collator
        from bert.data.prepare import load_prepared, run_prepare

        cfg, accelerator = self.cfg, self.accelerator
        with accelerator.main_process_first():
            prepared = run_prepare(cfg, progress=self.main)
        splits, data_meta = load_prepared(prepared)
        self.tokenizer_dir = Path(prepared) / "tokenizer"
        vocab_size = data_meta.get("vocab_size")
        if isinstance(vocab_size, int) and vocab_size != cfg.model.vocab_size:
            self.print(f"model.vocab_size {cfg.model.vocab_size} -> {vocab_size} (the tokenizer's)")
            cfg.model.vocab_size = vocab_size
        self.collator = build_collator(prepared, cfg.data, cfg.train.seed)
        self.train_set, eval_set = splits["train"], splits["validation"]
        if len(eval_set) == 0:
            raise UserError(f"{prepared}: the validation split is empty (raise data.validation_fraction)")
        if cfg.train.eval_batches is not None:  # a fixed subset, iterated in full: the same every time
            limit = cfg.train.eval_batches * cfg.train.batch_size * accelerator.num_processes
            eval_set = eval_set.select(range(min(limit, len(eval_set))))
        loader = DataLoader(EpochDataset(eval_set), batch_size=cfg.train.batch_size, collate_fn=self.collator)
        self.eval_loader = accelerator.prepare(loader)

    def _model(self) -> None:
        from bert.model import BertForPreTraining

        cfg, accelerator = self.cfg, self.accelerator
        model = BertForPreTraining(cfg.model)
        if cfg.train.init_from:
            _load_init(model, cfg.train.init_from)
        model, paths = prepare_model(model, accelerator.device, cfg.train)
        self.cross_entropy = paths.cross_entropy()
        optimizer = build_optimizer(model, cfg.optimizer)
        self.schedule = Schedule(cfg.optimizer, cfg.train.max_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)

    def _resume(self) -> None:
        """Clean the folder, then restore the newest checkpoint that verifies and loads (or start fresh)."""
        from accelerate.utils import set_seed

        cfg, accelerator = self.cfg, self.accelerator
        self.compat = _compat_keys(cfg, self.tokenizer_dir, accelerator.num_processes)
        self.run_id = new_run_id()
        self.metrics_lines = 0
        folder = self._choose_checkpoint()
        while folder is not None:
            problem = None
            try:
                meta = self.checkpointer.load(folder, self.model, self.optimizer)
            except ckpt.CheckpointError as err:
                problem = str(err)
            failed = all_reduce_sum(accelerator, [float(problem is not None)])[0] > 0
            if not failed:
                break
            self.print(f"warning: checkpoint {folder.name}: {problem or 'cannot be restored on a process'}")
            folder = self._choose_checkpoint(before=folder)
        if folder is None:
            set_seed(cfg.train.seed + accelerator.process_index)  # different dropout on every process
            return
        apply_hyperparameters(self.optimizer, cfg.optimizer)
        state = self.state
        state.step = meta["step"]
        state.epoch, state.index = meta["data"]["epoch"], meta["data"]["index"]
        state.counters.update(meta.get("counters", {}))
        state.last_eval = meta.get("eval", {})
        self.run_id = meta.get("run_id") or self.run_id
        self.metrics_lines = meta.get("metrics_lines", 0)
        self.print(
            f"resumed from {folder} (step {state.step}, epoch {state.epoch}, micro-batch {state.index})"
        )
        changed = _changed_settings(meta.get("config", {}), to_dict(cfg))
        if changed:
            self.print(
                f"resuming with changed settings (they apply from step {state.step + 1} on): {changed}"
            )

    def _choose_checkpoint(self, before: Path | None = None) -> Path | None:
        """Main process decides (and cleans, and checks compatibility); every process gets its answer."""
        chosen = ""
        if self.main:
            warn = lambda line: print(f"warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
            if before is None:
                self.checkpointer.clean()
                self._fresh_start_rules()
            if self.cfg.train.resume:
                candidates = ckpt.list_checkpoints(self.run_dir)
                if before is not None:
                    candidates = [c for c in candidates if c.name < before.name]
                for folder in reversed(candidates):
                    problem = ckpt.verify(folder)
                    if problem is None:
                        chosen = str(folder)
                        break
                    warn(f"checkpoint {folder.name}: {problem}; trying the previous one")
                if not chosen and candidates:
                    raise UserError(
                        f"{self.run_dir}: no usable checkpoint left ({len(candidates)} damaged); "
                        "train.resume=false train.overwrite=true starts over"
                    )
                if chosen:
                    meta = ckpt.read_meta(chosen)
                    ckpt.check_compatible(Path(chosen), meta.get("compat", {}), self.compat)
        chosen = broadcast_token(self.accelerator, chosen)
        return Path(chosen) if chosen else None

    def _fresh_start_rules(self) -> None:
        """resume=false in a folder that holds a run: refuse, or with overwrite=true remove that run."""
        if self.cfg.train.resume:
            return
        old = [self.run_dir / name for name in ("checkpoints", "export", "metrics.jsonl")]
        if not ckpt.list_checkpoints(self.run_dir) and not (self.run_dir / "export").exists():
            return
        if not self.cfg.train.overwrite:
            raise UserError(
                f"{self.run_dir} holds an earlier run (checkpoints or export) and train.resume=false: add "
                "train.overwrite=true to delete it and start over, or choose another train.output_dir"
            )
        for path in old:
            if path.is_dir():
                fs.remove_folder(path)
            elif path.exists():
                path.unlink()
        for path in self.run_dir.glob("example_ids_rank*.jsonl"):
            path.unlink()
        self.print(
            f"train.overwrite=true: removed the earlier run's checkpoints, export and metrics in {self.run_dir}"
        )

    def _logging(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        self.sampler = ShardedBatchSampler(
            len(self.train_set),
            cfg.train.batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            cfg.train.seed,
            self.state.epoch,
            self.state.index,
        )
        loader = DataLoader(
            EpochDataset(self.train_set),
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=cfg.train.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            # its own generator: creating the iterator must not draw from the global RNG that dropout
            # uses, or a resumed run's dropout would be shifted by one draw
            generator=torch.Generator().manual_seed(cfg.train.seed + accelerator.process_index),
        )
        self.batches = iter(loader)
        self.metrics_file = MetricsFile(self.run_dir / "metrics.jsonl", enabled=self.main)
        if self.main:
            self.metrics_file.truncate(self.metrics_lines)  # each step once after a resume
            save_config(cfg, self.run_dir / "config.yaml")  # what this run really uses
        trackers, init_kwargs = tracker_setup(
            cfg.logging,
            self.run_id,
            cfg.logging.run_name or self.run_dir.resolve().name,
            str(self.run_dir),
            resumed_step=self.state.step,
        )
        if trackers:
            accelerator.init_trackers(cfg.logging.project, config=hparams(cfg), init_kwargs=init_kwargs)
            self.trackers_started = True
        self.progress = Progress(
            cfg.train.max_steps,
            self.state.step,
            desc="pretrain",
            enabled=self.main and cfg.logging.progress_bar,
            interval=cfg.logging.progress_interval,
        )
        self.started = time.time()
        self.model.train()

    # -------------------------------------------------------------------------------------- during the run

    def print(self, message: str) -> None:
        """A line on the main process that does not break the progress bar."""
        if self.progress is not None and self.main:
            self.progress.write(message)
        else:
            print0(self.accelerator, message)

    def log(self, kind: str, figures: dict[str, float]) -> None:
        """Send `kind/` figures to the trackers and metrics.jsonl; echo eval lines (and train lines when
        there is no progress output)."""
        if not figures:
            return
        step = self.state.step
        logs = {f"{kind}/{name}": value for name, value in figures.items()}
        if kind == "eval":
            self.state.last_eval = {"step": step, **figures}
        if self.trackers_started:
            self.accelerator.log(logs, step=step)
        self.history.append({"step": step, **logs})
        self.metrics_file.append({"step": step, **logs})
        if kind == "eval" or not (self.progress and self.progress.enabled):
            text = " ".join(
                f"{name}={value:.4g}" for name, value in figures.items() if isinstance(value, float)
            )
            self.print(f"step {step} {kind}: {text}")

    def evaluated_at(self, step: int) -> bool:
        return any(h["step"] == step and "eval/mlm_loss" in h for h in self.history)

    def save(self) -> Path | None:
        """A checkpoint of the current step, unless the run is in a non-finite streak (then None)."""
        state = self.state
        if state.nonfinite_streak:
            self.print(
                f"step {state.step}: not saved, the last {state.nonfinite_streak} step(s) were non-finite "
                f"(latest healthy checkpoint: {ckpt.latest_checkpoint(self.run_dir) or 'none'})"
            )
            return None
        meta = {
            "data": {
                "epoch": state.epoch,
                "index": state.index,
                "batches_per_epoch": self.sampler.batches_per_epoch,
            },
            "counters": state.counters,
            "run_id": self.run_id,
            "num_processes": self.accelerator.num_processes,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "eval": state.last_eval,
            "metrics_lines": self.metrics_file.lines,
            "compat": self.compat,
            "config": to_dict(self.cfg),
        }
        return self.checkpointer.save(state.step, self.model, self.optimizer, meta, self.tokenizer_dir)

    def export(self) -> None:
        """The final model in the Hugging Face format, with its tokenizer (main process writes)."""
        from bert.model import BertForPreTraining

        state_dict = self.accelerator.get_state_dict(self.model)  # every process (collective if sharded)
        self.export_dir = self.run_dir / "export"
        if self.main:
            export = BertForPreTraining(self.cfg.model)
            export.load_state_dict(state_dict)
            ckpt.write_export(export, self.tokenizer_dir, self.export_dir)
            seconds = time.time() - self.started
            self.print(
                f"done: {self.state.step} steps in {seconds:.0f}s; model exported to {self.export_dir}"
            )
        self.accelerator.wait_for_everyone()

    def result(self, stopped: bool) -> dict[str, Any]:
        final = next((h for h in reversed(self.history) if "eval/mlm_loss" in h), None)
        out = {"step": self.state.step, "stopped": stopped, "history": self.history, "metrics": final}
        if not stopped:
            out["export"] = self.export_dir
        return out

    def close(self) -> None:
        """The one teardown, whatever ended the run: progress, trackers, signal handlers, the lock."""
        if self.progress is not None:
            self.progress.close()
        if self.trackers_started:
            self.accelerator.end_training()
        self.stop.restore()
        if self.lock is not None:
            self.lock.release()


# ------------------------------------------------------------------------------------------ set-up helpers


def _mfu(cfg: PretrainConfig, tokens_per_s_per_device: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak (None when unknown)."""
    from bert.model.flops import mfu, training_flops_per_token

    flops = training_flops_per_token(cfg.model, cfg.data.max_seq_length, cfg.data.masked_lm_prob)
    dtype = cfg.train.mixed_precision if cfg.train.mixed_precision != "no" else "fp32"
    return mfu(tokens_per_s_per_device * flops, device, dtype)


def _compat_keys(cfg: PretrainConfig, tokenizer_dir: Path, num_processes: int) -> dict[str, Any]:
    """What a resumed checkpoint must agree on (see bert.checkpoint.compatibility_problems)."""
    digest = hashlib.sha256()
    for name in ("vocab.txt", "tokenizer.json"):
        if (tokenizer_dir / name).is_file():
            digest.update((tokenizer_dir / name).read_bytes())
    return {
        **{f"model.{k}": v for k, v in to_dict(cfg.model).items() if k != "architectures"},
        "optimizer.name": cfg.optimizer.name,
        "train.batch_size": cfg.train.batch_size,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "tokenizer": digest.hexdigest()[:16],
        "num_processes": num_processes,
    }


_RESUME_SETTINGS = ("optimizer.", "train.max_steps")
"""Settings that may change on resume and apply from the resumed step on (module docstring)."""


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'optimizer.lr: 0.0001 -> 5e-05; ...' for the resumable settings that differ."""
    old, new = flatten(saved), flatten(current)
    keys = [k for k in new if k.startswith(_RESUME_SETTINGS) and k in old and old[k] != new[k]]
    return "; ".join(f"{k}: {json.dumps(old[k])} -> {json.dumps(new[k])}" for k in keys)


def _load_init(model: Any, folder: str) -> None:
    """`train.init_from`: weights only (not a resume), from an export or any Hugging Face BERT folder."""
    from bert.model import convert
    from bert.model.config import BertConfig

    source_cfg = to_dict(BertConfig.from_pretrained(folder))
    own_cfg = to_dict(model.config)
    shape_keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )
    differ = [
        f"model.{k}: {source_cfg[k]!r} (init_from) vs {own_cfg[k]!r}"
        for k in shape_keys
        if source_cfg[k] != own_cfg[k]
    ]
    if differ:
        raise UserError(f"train.init_from={folder}: the model differs in {'; '.join(differ)}")
    state = convert.normalize_keys(convert.read_state_dict(folder), model.base_model_prefix)
    # phase 2 may extend the position table: the saved rows are copied, the new ones keep their init
    convert.load_weights(model, state, f"train.init_from={folder}", extend_positions=True)
