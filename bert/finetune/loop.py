"""`bert finetune`: one fine-tuning run per seed, evaluated every epoch, the best epoch kept.

`finetune(cfg)` checks the config against the model (sequence length vs its position table), tokenises the
task once (bert/finetune/data.py), then for every seed runs `train_one_seed`: a loop that reads top to
bottom (train an epoch, evaluate, keep the best model by the task's metric), then writes test predictions and
`metrics.json`. A seed whose `metrics.json` was written by the same settings is not run again (a run that was
interrupted, or `bert glue` re-run, continues where it stopped). `results.json` and a table summarise the
seeds (bert/finetune/report.py). Only the main process prints and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bert import fs
from bert.config import FinetuneConfig, save_config
from bert.export import resolve_model_path
from bert.finetune.data import (
    FinetuneData,
)
from bert.finetune.report import predict, score, summarise, table
from bert.finetune.run import (
    SeedParts,
    check_model,
    finetune_accelerator,
    finished_seed,
    save_model,
    seed_parts,
    settings_fingerprint,
    start_seed_trackers,
    steps_per_epoch,
    write_test_predictions,
)
from bert.progress import Progress
from bert.tasks import Task, load_task
from bert.tokenizer import load_tokenizer, pair_tokenizer, tokenizer_folder
from bert.training import main_process_first, release_freed_memory


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune `cfg.model_path` on `cfg.task` once per seed; returns (and writes) every result."""
    task = load_task(cfg.task)
    check_model(cfg)
    accelerator, trackers, init_kwargs = finetune_accelerator(cfg, with_trackers=True)
    out = Path(cfg.train.output_dir)
    with main_process_first(accelerator, "bert/model_path"):
        model_path = resolve_model_path(cfg.model_path, out, accelerator.is_main_process)
    cfg = dataclasses.replace(cfg, model_path=str(model_path))
    tokenizer = pair_tokenizer(load_tokenizer(tokenizer_folder(cfg.model_path)), cfg.train.max_length)
    with main_process_first(accelerator, "bert/tokenize"):  # the main process fills the token cache first
        data = FinetuneData.load(
            task,
            tokenizer,
            cfg.train.max_length,
            cfg.train.cache_dir,
            cfg.train.predict_test,
            cfg.task.max_train_examples,
            cfg.task.subsample_seed,
        )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(
            f"finetune {task.name}: {len(data.train)} train, "
            + ", ".join(f"{len(v)} {k}" for k, v in data.dev.items())
            + (", " + ", ".join(f"{len(v)} {k}" for k, v in data.test.items()) if data.test else "")
            + f" pairs; model {cfg.model_path}; {accelerator.num_processes} process(es) on {accelerator.device}; "
            + f"batch {cfg.train.global_batch_size} sequences a step"
            + (
                f" ({cfg.train.gradient_accumulation_steps} micro-batches of {cfg.train.micro_batch_size})"
                if cfg.train.gradient_accumulation_steps > 1
                else ""
            ),
            flush=True,
        )
    seeds = list(cfg.train.seeds)
    results = []
    for seed in seeds:
        run_dir = out if len(seeds) == 1 else out / f"seed_{seed}"
        done = finished_seed(run_dir, cfg, seed)
        if done is not None:
            if accelerator.is_main_process:
                print(f"seed {seed}: finished earlier with these settings ({run_dir / 'metrics.json'})")
            results.append(done)
            continue
        if trackers:  # one dashboard run per seed, grouped (bert/tracking.py)
            start_seed_trackers(accelerator, cfg, task, seed, run_dir, several=len(seeds) > 1)
        result = train_one_seed(cfg, task, data, accelerator, seed, run_dir)
        if trackers:
            from bert.tracking import finish_trackers

            best = {f"best/{split}/{k}": v for split, m in result["dev"].items() for k, v in m.items()}
            finish_trackers(accelerator, {**best, "best/epoch": result["best_epoch"]})
        results.append(result)
    summary = summarise(task, results)
    if accelerator.is_main_process:
        fs.atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
        print(table(summary))
    accelerator.end_training()
    return summary


@dataclass
class Counters:
    """Optimizer steps taken (`step`) and the steps the schedule has advanced (`lr_step`: an fp16 overflow
    skips an update, and the schedule waits for it); `lr` is the rate of the last step."""

    step: int = 0
    lr_step: int = 0
    lr: float = 0.0


@dataclass
class Best:
    """The best epoch so far by the task's metric: its value, its dev record and its weights (on the CPU)."""

    value: float = -math.inf
    epoch: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None

    def offer(self, value: float, epoch: int, record: dict[str, Any], model: torch.nn.Module) -> bool:
        """Keep this epoch when it beats the best so far (or is the first); returns whether it was kept."""
        if value <= self.value and self.state is not None:
            return False
        self.value, self.epoch, self.record = value, epoch, record
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True


@dataclass
class EpochResult:
    """One pass over the training set: its mean loss, and whether the seed's planned steps are all taken."""

    loss: float
    done: bool


def train_epoch(
    cfg: FinetuneConfig,
    task: Task,
    parts: SeedParts,
    accelerator: Any,
    counters: Counters,
    progress: Progress,
) -> EpochResult:
    """One pass over the training set (or up to the planned step count). Every
    `train.gradient_accumulation_steps` micro-batches make one optimizer step."""
    model, optimizer, train_cfg = parts.model, parts.optimizer, cfg.train
    release_every = train_cfg.release_memory_every if accelerator.device.type == "cpu" else None
    loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
    model.train()
    for batch in parts.train_loader:
        with accelerator.accumulate(model):
            logits = model(**batch.model_inputs()).logits  # (B, C)
            loss = task_loss(logits, batch.labels, task.is_regression)
            accelerator.backward(loss)
            if accelerator.sync_gradients:  # the last micro-batch of the step: clip, and this step's rate
                if cfg.optimizer.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm)
                counters.lr = parts.schedule.apply(optimizer, counters.lr_step)
            optimizer.step()  # Accelerate steps only at the end of an accumulation
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        if not accelerator.sync_gradients:
            continue
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule waits too
            counters.lr_step += 1
        counters.step += 1
        if release_every and counters.step % release_every == 0:
            release_freed_memory()
        if counters.step % train_cfg.log_every == 0:
            mean_loss = loss_sum.item() / loss_count
            progress.update(1, loss=mean_loss)
            accelerator.log({"train/loss": mean_loss, "train/lr": counters.lr}, step=counters.step)
        else:
            progress.update(1)
        if counters.step >= parts.total_steps:
            break
    return EpochResult(loss_sum.item() / max(loss_count, 1), counters.step >= parts.total_steps)


def evaluate_dev(
    cfg: FinetuneConfig, task: Task, parts: SeedParts, data: FinetuneData, accelerator: Any
) -> dict[str, dict[str, float]]:
    """The task's metrics on every dev split: {split: {metric: value}}."""
    metrics = {
        name: score(
            task, predict(parts.model, loader, accelerator, len(data.dev[name])), data.dev[name].labels
        )
        for name, loader in parts.dev_loaders.items()
    }
    if accelerator.device.type == "cpu" and cfg.train.release_memory_every:
        release_freed_memory()
    return metrics


@dataclass
class EpochScore:
    """An epoch's dev metrics {split: {metric: value}}, and its record for the history and the trackers."""

    dev: dict[str, dict[str, float]]
    record: dict[str, Any]


def score_epoch(
    cfg: FinetuneConfig, task: Task, parts: SeedParts, data: FinetuneData, accelerator: Any, epoch: int,
    step: int, loss: float,
) -> EpochScore:  # fmt: skip
    """Evaluate on every dev split after `epoch` (0-based) and log the record."""
    dev = evaluate_dev(cfg, task, parts, data, accelerator)
    record = {"epoch": epoch + 1, "step": step, "train/epoch_loss": loss}
    record.update({f"{name}/{k}": v for name, m in dev.items() for k, v in m.items()})
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
    return EpochScore(dev, record)


def train_one_seed(
    cfg: FinetuneConfig,
    task: Task,
    data: FinetuneData,
    accelerator: Any,
    seed: int,
    run_dir: Path,
) -> dict[str, Any]:
    """Train, evaluate after each epoch, keep the best epoch's model; then test predictions and the result."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    set_seed(seed)
    parts = seed_parts(cfg, task, data, accelerator, seed)
    main_split, main = next(iter(parts.dev_loaders)), accelerator.is_main_process
    best, counters, history = Best(), Counters(), []
    progress = Progress(parts.total_steps, desc=f"seed {seed}", enabled=main and cfg.logging.progress_bar,
                        interval=cfg.logging.progress_interval)  # fmt: skip
    epochs = math.ceil(
        parts.total_steps / steps_per_epoch(len(parts.sampler), cfg.train.gradient_accumulation_steps)
    )
    for epoch in range(epochs):
        parts.sampler.set_epoch(epoch)
        trained = train_epoch(cfg, task, parts, accelerator, counters, progress)
        last = epoch == epochs - 1 or trained.done
        if not (cfg.train.eval_every_epoch or last):
            continue
        scored = score_epoch(cfg, task, parts, data, accelerator, epoch, counters.step, trained.loss)
        history.append(scored.record)
        unwrapped = accelerator.unwrap_model(parts.model)
        improved = best.offer(scored.dev[main_split][task.main_metric], epoch + 1, scored.record, unwrapped)
        if improved and cfg.train.save_model and main:
            facts = {"seed": seed, "epoch": epoch + 1, "dev": scored.dev, "train_examples": len(data.train)}
            save_model(unwrapped, task, cfg, run_dir / "best", facts)
        if main:
            shown = "  ".join(f"{name} {k} {v:.4f}" for name, m in scored.dev.items() for k, v in m.items())
            progress.write(
                f"seed {seed} epoch {epoch + 1}: train loss {trained.loss:.4f}  {shown}"
                + ("  (best)" if improved else "")
            )
        if last:
            break
    progress.close()
    train_seconds = time.perf_counter() - started
    accelerator.unwrap_model(parts.model).load_state_dict(best.state)
    best.state = None
    write_test_predictions(task, data, parts, accelerator, run_dir, cfg.train.eval_batch_size)
    timing = {"seconds": round(time.perf_counter() - started, 2), "train_seconds": round(train_seconds, 2)}
    result = seed_result(cfg, task, parts, data, seed, run_dir, best, counters, history, timing)
    if main:
        fs.atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    accelerator.free_memory(parts.model, parts.optimizer)
    return result


def seed_result(
    cfg: FinetuneConfig, task: Task, parts: SeedParts, data: FinetuneData, seed: int, run_dir: Path, best: Best,
    counters: Counters, history: list[dict[str, Any]], timing: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """What metrics.json records of a seed: the best epoch's dev metrics, the history, the budget, the
    settings' fingerprint (a re-run with the same settings and weights reads it back)."""
    return {
        "seed": seed,
        "best_epoch": best.epoch,
        "main_metric": task.main_metric,
        "dev": {name: {k: best.record[f"{name}/{k}"] for k in task.metrics} for name in parts.dev_loaders},
        "history": history,
        "steps": counters.step,
        "train_examples": len(data.train),
        **timing,
        "model": str(run_dir / "best") if cfg.train.save_model else None,
        "fast_paths": parts.fast_paths,
        "attention": parts.attention,
        "settings": settings_fingerprint(cfg, seed),
    }


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy over the labels, or mean squared error for regression; computed in fp32."""
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())  # logits (B, 1)
    return F.cross_entropy(logits.float(), labels)  # logits (B, C)
