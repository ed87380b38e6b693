"""`bert evaluate`: score a saved fine-tuned model on a split of a task (test: write predictions instead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bert.config import FinetuneConfig
from bert.errors import UserError
from bert.finetune.data import PairCollator, encode_split, eval_loader
from bert.finetune.report import predict, score, write_predictions
from bert.finetune.run import finetune_accelerator, load_model
from bert.model.config import read_config_json
from bert.tasks import load_task
from bert.tokenizer import load_tokenizer, pair_tokenizer, tokenizer_folder


def evaluate_saved(
    model_path: str | Path, cfg: FinetuneConfig, split: str = "dev", output: str | Path | None = None
) -> dict[str, Any]:
    """Score a fine-tuned model folder on a split of `cfg.task` (test: write predictions instead)."""
    model_path = Path(model_path)
    saved = read_config_json(model_path)
    names = [saved["id2label"][str(i)] for i in range(len(saved.get("id2label", {})))]
    task = load_task(cfg.task, labels=names if names and not names[0].startswith("LABEL_") else None)
    if saved.get("num_labels", len(names)) != task.num_labels:
        raise UserError(
            f"{model_path}: the model has {saved.get('num_labels')} outputs, task '{task.name}' needs {task.num_labels}"
        )
    tokenizer = pair_tokenizer(load_tokenizer(tokenizer_folder(model_path)), cfg.train.max_length)
    accelerator, _, _ = finetune_accelerator(cfg, with_trackers=False)
    model, _ = load_model(model_path, task, cfg.model.attn_implementation)
    collator = PairCollator(tokenizer.token_to_id("[PAD]"), task.is_regression, cfg.train.pad_to_multiple_of)
    model = accelerator.prepare(model)
    results: dict[str, Any] = {"model": str(model_path), "task": task.name, "split": split}
    for name in task.split_names(split) if split != "train" else ["train"]:
        examples = task.read(name)
        encoded = encode_split(tokenizer, examples, cfg.train.max_length, cfg.train.cache_dir)
        loader = accelerator.prepare(eval_loader(encoded, collator, cfg.train.eval_batch_size))
        outputs = predict(model, loader, accelerator, len(encoded))
        if examples.labels is None:
            path = Path(output).with_suffix("") / f"{name}.tsv" if output else Path(f"predictions_{name}.tsv")
            if accelerator.is_main_process:
                write_predictions(task, examples, outputs, path)
                print(f"{name}: {len(examples)} predictions written to {path}")
            results[name] = {"predictions": str(path)}
            continue
        metrics = score(task, outputs, examples.labels)
        results[name] = metrics
        if accelerator.is_main_process:
            print(
                f"{name}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                + f"  ({len(examples)} pairs)"
            )
    if output and accelerator.is_main_process:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
    return results
