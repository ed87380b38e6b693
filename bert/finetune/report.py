"""Fine-tuning results: model outputs for a split, the task's metrics, GLUE-style prediction files, and the
summary over seeds (mean and sample standard deviation) with its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert.glue_metrics import compute_metrics
from bert.tasks import PairExamples, Task


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: Any, accelerator: Any, size: int) -> np.ndarray:
    """Model outputs for every row of a split, in the split's order: (N, C) logits or (N,) scores."""
    model.eval()
    outputs: np.ndarray | None = None
    for batch in loader:
        logits = model(**batch.model_inputs()).logits  # (B, C)
        logits, index = accelerator.gather_for_metrics((logits.float(), batch.index))
        if outputs is None:
            outputs = np.zeros((size, logits.shape[-1]), dtype=np.float32)
        outputs[index.cpu().numpy()] = logits.cpu().numpy()
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def score(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics for model outputs (logits or scores) against labels."""
    predictions = outputs if task.is_regression else outputs.argmax(-1)
    return compute_metrics(task.metrics, predictions, labels)


def write_predictions(task: Task, examples: PairExamples, outputs: np.ndarray, path: Path) -> None:
    """GLUE submission style: a header line `index<TAB>prediction`, then one line per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        if task.is_regression:
            for i, value in zip(examples.ids, outputs):
                f.write(f"{i}\t{value:.3f}\n")
        else:
            for i, label in zip(examples.ids, outputs.argmax(-1)):
                f.write(f"{i}\t{task.labels[label]}\n")


def summarise(task: Task, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every seed's dev metrics plus mean and (sample) standard deviation over seeds."""
    summary: dict[str, Any] = {"task": task.name, "main_metric": task.main_metric, "seeds": results}
    stats: dict[str, dict[str, float]] = {}
    for split in results[0]["dev"]:
        for metric in results[0]["dev"][split]:
            values = np.array([r["dev"][split][metric] for r in results], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            stats[f"{split}/{metric}"] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    summary["mean_std"] = stats
    return summary


def table(summary: dict[str, Any]) -> str:
    """The per-seed table (metrics x 100) with a mean +- std line for several seeds."""
    keys = list(summary["mean_std"])
    header = f"{'seed':>6}  " + "  ".join(f"{k:>22}" for k in keys) + f"  {'best epoch':>10}  {'seconds':>8}"
    lines = [header]
    for r in summary["seeds"]:
        values = "  ".join(f"{r['dev'][k.split('/')[0]][k.split('/')[1]] * 100:>22.2f}" for k in keys)
        lines.append(f"{r['seed']:>6}  {values}  {r['best_epoch']:>10}  {r['seconds']:>8.1f}")
    if len(summary["seeds"]) > 1:
        values = "  ".join(
            f"{summary['mean_std'][k]['mean'] * 100:>13.2f} +- {summary['mean_std'][k]['std'] * 100:>5.2f}"
            for k in keys
        )
        lines.append(f"{'mean':>6}  {values}")
    return "\n".join(lines)
