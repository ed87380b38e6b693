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
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bert import fs
from bert.config import FinetuneConfig, save_config, to_dict
from bert.errors import UserError
from bert.finetune.data import (
    FinetuneData,
    LengthGroupedBatchSampler,
    PairCollator,
    eval_loader,
    make_loader,
)
from bert.finetune.report import predict, score, summarise, table, write_predictions
from bert.model.config import read_config_json
from bert.model.convert import weights_digest
from bert.optim import Schedule, build_optimizer
from bert.progress import Progress
from bert.tasks import Task, load_task
from bert.tokenizer import load_tokenizer, pair_tokenizer, tokenizer_folder
from bert.training import main_process_first, make_accelerator, prepare_model, release_freed_memory


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
            _start_seed_trackers(accelerator, cfg, task, seed, run_dir, several=len(seeds) > 1)
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
class SeedParts:
    """What one seed trains with, built by `seed_parts`: the prepared model, optimizer, loaders and schedule."""

    model: Any
    optimizer: Any
    sampler: LengthGroupedBatchSampler
    train_loader: Any
    dev_loaders: dict[str, Any]
    collator: PairCollator
    schedule: Schedule
    total_steps: int
    fast_paths: list[str]


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


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """Optimizer steps of one pass over `batches` micro-batches (the last step may take fewer)."""
    return max(1, math.ceil(batches / accumulation))


def planned_steps(train_cfg: Any, batches: int) -> int:
    """The optimizer steps of a seed: `train.max_steps` when set, else `train.epochs` passes."""
    if train_cfg.max_steps is not None:
        return train_cfg.max_steps
    return max(
        1, math.ceil(train_cfg.epochs * steps_per_epoch(batches, train_cfg.gradient_accumulation_steps))
    )


def seed_parts(cfg: FinetuneConfig, task: Task, data: FinetuneData, accelerator: Any, seed: int) -> SeedParts:
    """The model (from cfg.model_path, with the task's head), optimizer, loaders and schedule of one seed."""
    train_cfg = cfg.train
    model, _ = load_model(cfg.model_path, task, cfg.attn_implementation)
    model, paths = prepare_model(model, accelerator.device, train_cfg)
    optimizer = build_optimizer(model, cfg.optimizer)
    sampler = LengthGroupedBatchSampler(
        data.train.lengths,
        train_cfg.micro_batch_size,
        seed,
        train_cfg.mega_batch,
        group=train_cfg.group_by_length,
    )
    collator = PairCollator(data.pad_token_id, task.is_regression, train_cfg.pad_to_multiple_of)
    train_loader = make_loader(data.train, sampler, collator, train_cfg.num_workers)
    dev_loaders = {
        name: eval_loader(split, collator, train_cfg.eval_batch_size, train_cfg.num_workers)
        for name, split in data.dev.items()
    }
    total_steps = planned_steps(train_cfg, len(sampler))
    model, optimizer, train_loader, *dev_list = accelerator.prepare(
        model, optimizer, train_loader, *dev_loaders.values()
    )
    return SeedParts(
        model, optimizer, sampler, train_loader, dict(zip(dev_loaders, dev_list)), collator,
        Schedule(cfg.optimizer, total_steps), total_steps, paths.names(),
    )  # fmt: skip


def train_epoch(
    cfg: FinetuneConfig,
    task: Task,
    parts: SeedParts,
    accelerator: Any,
    counters: Counters,
    progress: Progress,
) -> float:
    """One pass over the training set (or up to the planned step count); returns its mean loss. Every
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
    return loss_sum.item() / max(loss_count, 1)


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
        loss = train_epoch(cfg, task, parts, accelerator, counters, progress)
        last = epoch == epochs - 1 or counters.step >= parts.total_steps
        if not (cfg.train.eval_every_epoch or last):
            continue
        scored = score_epoch(cfg, task, parts, data, accelerator, epoch, counters.step, loss)
        history.append(scored.record)
        unwrapped = accelerator.unwrap_model(parts.model)
        improved = best.offer(scored.dev[main_split][task.main_metric], epoch + 1, scored.record, unwrapped)
        if improved and cfg.train.save_model and main:
            facts = {"seed": seed, "epoch": epoch + 1, "dev": scored.dev, "train_examples": len(data.train)}
            save_model(unwrapped, task, cfg, run_dir / "best", facts)
        if main:
            shown = "  ".join(f"{name} {k} {v:.4f}" for name, m in scored.dev.items() for k, v in m.items())
            progress.write(
                f"seed {seed} epoch {epoch + 1}: train loss {loss:.4f}  {shown}"
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
        "settings": settings_fingerprint(cfg, seed),
    }


def write_test_predictions(
    task: Task, data: FinetuneData, parts: SeedParts, accelerator: Any, run_dir: Path, batch_size: int
) -> None:
    """The model's predictions on every test split, as GLUE submission files under <run>/predictions."""
    for name, split in data.test.items():
        loader = accelerator.prepare(eval_loader(split, parts.collator, batch_size))
        outputs = predict(parts.model, loader, accelerator, len(split))
        if accelerator.is_main_process:
            write_predictions(
                task, data.test_examples[name], outputs, run_dir / "predictions" / f"{name}.tsv"
            )


# --------------------------------------------------------------------------------------- the model


def check_model(cfg: FinetuneConfig) -> None:
    """Before any data is read: the model folder exists, and its position table covers train.max_length."""
    if not cfg.model_path:
        raise UserError(
            "model_path is not set (a model folder: this project's export or a Hugging Face BERT)"
        )
    path = Path(cfg.model_path)
    if not path.is_dir():
        raise UserError(f"{cfg.model_path}: model folder not found")
    folder = model_folder(path)
    if folder is not None:
        positions = read_config_json(folder).get("max_position_embeddings")
        if isinstance(positions, int) and cfg.train.max_length > positions:
            raise UserError(
                f"train.max_length must be at most the model's max_position_embeddings ({positions}, "
                f"{folder / 'config.json'}), got {cfg.train.max_length}"
            )


def model_folder(path: str | Path) -> Path | None:
    """The model folder at `path`: the path itself or a run folder's `export/` (whichever holds config.json);
    None for anything else (a training checkpoint is exported first, `resolve_model_path`)."""
    for folder in (Path(path), Path(path) / "export"):
        if (folder / "config.json").is_file():
            return folder
    return None


def model_width(model_path: str | Path) -> int | None:
    """The hidden size of the model folder (or a run's export), for `mixed_precision=auto`; None if unknown."""
    folder = model_folder(model_path)
    width = read_config_json(folder).get("hidden_size") if folder is not None else None
    return width if isinstance(width, int) else None


def load_model(model_path: str | Path, task: Task, attn_implementation: str | None) -> tuple[Any, Any]:
    """A sequence classifier from a model folder, with the task's output count and problem type; returns
    (model, LoadReport). A pretrained encoder has no classifier yet: that one is expected; any other
    missing weight is a warning naming it."""
    import warnings

    from bert.model import BertForSequenceClassification

    overrides: dict[str, Any] = {
        "num_labels": task.num_labels,
        "problem_type": "regression" if task.is_regression else "single_label_classification",
    }
    if attn_implementation is not None:
        overrides["attn_implementation"] = attn_implementation
    model, report = BertForSequenceClassification.from_pretrained(
        model_path, output_loading_info=True, **overrides
    )
    missing = [k for k in report.missing if not k.startswith("classifier.")]
    if missing:
        warnings.warn(
            f"{model_path}: weights not in the checkpoint, newly initialised: {', '.join(missing)}",
            stacklevel=2,
        )
    return model, report


def resolve_model_path(path: str | Path, output_dir: Path, write: bool = True) -> Path:
    """A folder with config.json: the path itself, a run folder's `export/`, or a training checkpoint
    (a step folder, or a run folder's latest) exported to `<output_dir>/init_model` first."""
    from bert.checkpoint import CHECKPOINTS, MARKER
    from bert.export import export_checkpoint

    path = Path(path)
    folder = model_folder(path)
    if folder is not None:
        return folder
    if (path / MARKER).is_file() or (path / CHECKPOINTS).is_dir():
        target = output_dir / "init_model"
        if write:
            export_checkpoint(path, target)
        return target
    raise UserError(f"{path}: not a model folder (no config.json) nor a training checkpoint")


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy over the labels, or mean squared error for regression; computed in fp32."""
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())  # logits (B, 1)
    return F.cross_entropy(logits.float(), labels)  # logits (B, C)


def save_model(
    model: torch.nn.Module, task: Task, cfg: FinetuneConfig, folder: Path, facts: dict[str, Any]
) -> None:
    """The model as a Hugging Face folder (bert.export.write_export) with the base model's tokenizer, the
    label names in config.json and a model card with the dev metrics of `facts` and the recipe."""
    from bert.card import finetuned_card
    from bert.export import write_export

    names = task.labels or ["score"]
    labels = {
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "finetuning_task": task.name,
        "architectures": ["BertForSequenceClassification"],
    }
    card = finetuned_card(task.name, task.labels, facts, to_dict(cfg))
    write_export(model, tokenizer_folder(cfg.model_path), folder, card, labels)


# ------------------------------------------------------------------------------------------- helpers


def settings_fingerprint(cfg: FinetuneConfig, seed: int) -> str:
    """What decides a seed's result: the config but the seed list, where it is written and how it is shown;
    and the model's weights (the same path may hold another model after more pretraining)."""
    settings = to_dict(cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in _NOT_SETTINGS}
    settings.pop("logging", None)
    settings["seed"] = seed
    settings["weights"] = weights_digest(cfg.model_path)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NOT_SETTINGS = {"seeds", "output_dir", "num_workers", "num_threads", "cache_dir", "log_every"}


def finished_seed(run_dir: Path, cfg: FinetuneConfig, seed: int) -> dict[str, Any] | None:
    """The result of `seed` if its metrics.json was written with the same settings, else None."""
    path = run_dir / "metrics.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("settings") == settings_fingerprint(cfg, seed) else None


def _start_seed_trackers(
    accelerator: Any, cfg: FinetuneConfig, task: Task, seed: int, run_dir: Path, several: bool
) -> None:
    """The dashboard run of one seed: named `<run name>-seed<N>` and grouped by the run name when there are
    several seeds (unless logging.group says otherwise), its TensorBoard events in the seed's folder."""
    from bert.tracking import start_trackers, tracker_setup

    output = Path(cfg.train.output_dir)
    base = cfg.logging.run_name or output.name
    name = f"{base}-seed{seed}" if several else base
    run_id = hashlib.sha1(f"{output.resolve()}#{seed if several else ''}".encode()).hexdigest()[:8]
    accelerator.project_configuration.logging_dir = str(run_dir)
    _, init_kwargs = tracker_setup(
        cfg.logging, run_id, name, str(run_dir), job_type=cfg.logging.job_type or "finetune", config=cfg,
        group=base if several else None,
    )  # fmt: skip
    metrics = ["train/loss", *(f"{split}/{task.main_metric}" for split in task.split_names("dev"))]
    start_trackers(accelerator, cfg.logging.project, cfg, init_kwargs, metrics)


def finetune_accelerator(cfg: FinetuneConfig, with_trackers: bool) -> tuple[Any, list[str], dict]:
    from bert.tracking import tracker_setup

    trackers, init_kwargs = ([], {})
    run_name = cfg.logging.run_name or Path(cfg.train.output_dir).name
    if with_trackers:
        run_id = hashlib.sha1(str(Path(cfg.train.output_dir).resolve()).encode()).hexdigest()[:8]
        trackers, init_kwargs = tracker_setup(cfg.logging, run_id, run_name, cfg.train.output_dir)
    # global_batch_size rows make an optimizer step: k micro-batches, each split over the processes.
    accelerator = make_accelerator(
        cfg.train.mixed_precision,
        cfg.train.output_dir,
        log_with=trackers,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        split_batches=True,
        model_width=model_width(cfg.model_path),
    )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.train.num_threads or max(1, len(os.sched_getaffinity(0)) // local))
    return accelerator, trackers, init_kwargs
