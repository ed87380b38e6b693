"""`bert plot RUN [RUN ...]`: the training and evaluation curves of one or several runs in one PNG, no server.

A run folder is read from what it already writes: a pretraining run's metrics.jsonl (one JSON line per logged
step), a fine-tuning run's metrics.json (the per-epoch history; with several seeds, every `seed_N/`). Each
metric is one panel, with every run's curve in it and a legend by run name (`logging.run_name` from the
run's config.yaml, else the folder's name). Default panels: the losses and accuracies that exist in any of
the runs; `--metrics` chooses others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bert.errors import UserError

DEFAULT_METRICS = (
    "train/loss",
    "eval/mlm_loss",
    "train/mlm_accuracy",
    "eval/mlm_accuracy",
    "eval/nsp_accuracy",
    "train/lr",
    "train/epoch_loss",
)
"""Panels drawn when they exist in some run, before the dev metrics of fine-tuning runs."""


def read_run(folder: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(run name, entries with 'step' and metric values) of a pretraining or fine-tuning run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    name = _run_name(folder)
    if (folder / "metrics.jsonl").is_file():
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return name, [json.loads(line) for line in lines if line.strip()]
    seeds = sorted(folder.glob("seed_*/metrics.json")) or sorted(folder.glob("metrics.json"))
    if not seeds:
        raise UserError(f"{folder}: no metrics.jsonl (pretraining) or metrics.json (fine-tuning) to plot")
    entries = []
    for path in seeds:
        label = path.parent.name if path.parent != folder else ""
        for record in json.loads(path.read_text()).get("history", []):
            prefix = f"{label}:" if label else ""
            entries.append(
                {"step": record["step"], **{prefix + k: v for k, v in record.items() if k != "step"}}
            )
    return name, entries


def _run_name(folder: Path) -> str:
    config = folder / "config.yaml"
    if config.is_file():
        import yaml

        name = ((yaml.safe_load(config.read_text()) or {}).get("logging") or {}).get("run_name")
        if name:
            return str(name)
    return folder.resolve().name


def choose_metrics(runs: list[tuple[str, list[dict[str, Any]]]], wanted: list[str] | None) -> list[str]:
    """The panels: `wanted` (each must exist in some run), else the defaults present plus dev metrics."""
    present = {k for _, entries in runs for e in entries for k, v in e.items() if _is_number(v)} - {"step"}
    if wanted:
        missing = [m for m in wanted if m not in present and not any(p.endswith(":" + m) for p in present)]
        if missing:
            raise UserError(
                f"--metrics: {', '.join(missing)} not in these runs (they have: {', '.join(sorted(present))})"
            )
        return wanted
    chosen = [m for m in DEFAULT_METRICS if m in present or any(p.endswith(":" + m) for p in present)]
    dev = sorted(
        {p.split(":")[-1] for p in present if p.split(":")[-1].startswith(("dev", "eval"))} - set(chosen)
    )
    return chosen + [m for m in dev if m != "epoch"] or sorted(present)[:6]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pyplot(purpose: str) -> Any:
    """matplotlib's pyplot drawing to files (Agg), or one line naming the extra that installs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"{purpose} needs matplotlib: pip install 'bertsmith[plots]'") from None
    return plt


def plot_runs(folders: list[str | Path], output: str | Path, metrics: list[str] | None = None) -> Path:
    """Draw the runs' curves into `output` (PNG); returns its path."""
    plt = pyplot("bert plot")
    runs = [read_run(folder) for folder in folders]
    panels = choose_metrics(runs, metrics)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for index, metric in enumerate(panels):
        ax = axes[index // columns][index % columns]
        for name, entries in runs:
            keys = sorted({k for e in entries for k in e if k == metric or k.endswith(":" + metric)})
            for key in keys:
                points = [(e["step"], e[key]) for e in entries if _is_number(e.get(key))]
                if points:
                    label = name if key == metric else f"{name} {key.split(':')[0]}"
                    ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if metric.endswith("lr"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.legend(fontsize=8)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
