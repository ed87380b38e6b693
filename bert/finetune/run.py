"""A fine-tuning run's set-up: the accelerator and trackers, the model (checked, loaded with the task's
head, saved with its tokenizer and card), one seed's parts (model, optimizer, loaders, schedule), and what
decides whether a seed already ran (the settings' fingerprint). The loops that use them are in loop.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bert.config import FinetuneConfig, to_dict
from bert.errors import UserError
from bert.export import model_folder
from bert.finetune.data import (
    FinetuneData,
    LengthGroupedBatchSampler,
    PairCollator,
    eval_loader,
    make_loader,
)
from bert.finetune.report import predict, write_predictions
from bert.model.config import read_config_json
from bert.model.convert import weights_digest
from bert.optim import Schedule, build_optimizer
from bert.tasks import Task
from bert.tokenizer import tokenizer_folder
from bert.training import make_accelerator, prepare_model


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
    attention: str
    """The attention that runs (FastPaths.attention of the model's attn_implementation)."""


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
    model, _ = load_model(cfg.model_path, task, cfg.model.attn_implementation)
    attention = model.config.attn_implementation
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
        Schedule(cfg.optimizer, total_steps), total_steps, paths.names(), paths.attention(attention),
    )  # fmt: skip


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


def start_seed_trackers(
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
