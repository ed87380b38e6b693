"""`bert glue MODEL_DIR`: fine-tune a model on every GLUE sentence-pair task of a folder, and one verdict.

For each task found in the GLUE-layout folder (MRPC/, RTE/, STS-B/, QQP/, MNLI/, QNLI/, WNLI/, each with
train.tsv and its dev files), `bert finetune` runs with the task's recipe (configs/finetune/<task>.yaml) and
every seed of `train.seeds`, writing into `<output>/<task>/` as it always does. The results are then one
table:

- `glue.json`: per task and dev split, the primary metric's mean, standard deviation (over seeds) and count,
  each seed's figures, the other metrics and the training budget (pairs, epochs, batch, learning rate); and
  the GLUE average as the GLUE benchmark computes it: the mean over tasks of each task's score, where a
  task with two metrics scores their mean (MRPC and QQP: F1 and accuracy; STS-B: Pearson and Spearman) and
  MNLI the mean of its matched and mismatched dev sets;
- `glue.md`: the same as markdown tables, printed at the end;
- TensorBoard (`<output>/tensorboard`: one scalar per entry and the table as text) and wandb (a table), as
  `logging.trackers` says.

Re-run after an interruption, a task whose seeds all finished with the same settings and the same weights
(a hash of the model file) is read back, not trained again (bert/finetune/loop.py keeps that per seed). The
default output folder is `runs/glue/<model>`, named after the run that made the model (`model_label`). `task.max_train_examples=N` subsamples the large
tasks' training sets (the same subset for every seed) for a quick look or a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bert import fs
from bert.config import CONFIG_ROOT, FinetuneConfig, load_config
from bert.errors import UserError

GLUE_FOLDERS = {
    "mrpc": "MRPC",
    "rte": "RTE",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "wnli": "WNLI",
}
"""The sentence-pair tasks, by name, and their folder in the GLUE layout (single-sentence tasks are not run)."""

ENTRY_NAMES = {"dev_matched": "mnli-m", "dev_mismatched": "mnli-mm"}


def find_tasks(data_dir: Path, wanted: list[str] | None = None) -> list[str]:
    """The tasks of GLUE_FOLDERS whose folder holds a train.tsv (in GLUE order), limited to `wanted`."""
    if wanted:
        unknown = [t for t in wanted if t not in GLUE_FOLDERS]
        if unknown:
            raise UserError(
                f"--tasks: unknown task(s) {', '.join(unknown)} (known: {', '.join(GLUE_FOLDERS)})"
            )
    found = [t for t in GLUE_FOLDERS if (data_dir / GLUE_FOLDERS[t] / "train.tsv").is_file()]
    for task in GLUE_FOLDERS:
        folder = data_dir / GLUE_FOLDERS[task]
        if folder.is_dir() and task not in found and (not wanted or task in wanted):
            print(f"warning: {folder} has no train.tsv: {task} is left out of the verdict", file=sys.stderr)
    if wanted:
        missing = [t for t in wanted if t not in found]
        if missing:
            folders = ", ".join(str(data_dir / GLUE_FOLDERS[t] / "train.tsv") for t in missing)
            raise UserError(f"--tasks: no training file for {', '.join(missing)} ({folders})")
        found = [t for t in found if t in wanted]
    if not found:
        expected = ", ".join(f"{f}/train.tsv" for f in GLUE_FOLDERS.values())
        raise UserError(f"{data_dir}: no GLUE task folder found (expected one of {expected})")
    return found


def model_label(model_dir: str | Path) -> str:
    """A model's name for dashboards: its folder, or the run's folder for an `export`, `best` or step
    folder (runs/bert_base/export -> bert_base; runs/ft/mrpc/seed_1/best -> mrpc)."""
    path = Path(model_dir).resolve()
    while path.name in ("export", "best") or path.name.startswith(("step_", "seed_", "checkpoints")):
        path = path.parent
    return path.name or "model"


def task_config(
    task: str, model_path: Path, data_dir: Path, output: Path, overrides: list[str], label: str = "model"
) -> FinetuneConfig:
    """The task's recipe with the model, its data folder, its output folder and the user's overrides; its
    dashboard runs are named `<model>-<task>[-seed<N>]` and grouped by model (overrides may change both)."""
    return load_config(
        FinetuneConfig,
        CONFIG_ROOT / "finetune" / f"{task}.yaml",
        [
            f"model_path={model_path}",
            f"task.data_dir={data_dir / GLUE_FOLDERS[task]}",
            f"train.output_dir={output / task}",
            f"logging.run_name={label}-{task}",
            f"logging.group={label}",
            "logging.job_type=glue",
            *overrides,
        ],
    )


def run_glue(
    model_dir: str | Path,
    data_dir: str | Path,
    output: str | Path | None = None,
    tasks: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fine-tune on every task found, then write and print the verdict (module docstring)."""
    from bert.export import resolve_model_path
    from bert.finetune.loop import finetune
    from bert.finetune.run import finished_seed

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such GLUE folder")
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: model folder not found")
    label = model_label(model_dir)
    output = Path(output) if output else Path("runs") / "glue" / label
    names = find_tasks(data_dir, tasks)
    model_path = resolve_model_path(model_dir, output)  # a checkpoint is exported once, for every task
    configs = {t: task_config(t, model_path, data_dir, output, list(overrides), label) for t in names}
    summaries = {}
    for name, cfg in configs.items():
        results_file = Path(cfg.train.output_dir) / "results.json"
        seeds = list(cfg.train.seeds)
        run_dirs = [Path(cfg.train.output_dir) / ("" if len(seeds) == 1 else f"seed_{s}") for s in seeds]
        if results_file.is_file() and all(finished_seed(d, cfg, s) for d, s in zip(run_dirs, seeds)):
            print(f"== {name}: finished earlier with these settings and weights ({results_file})", flush=True)
            summaries[name] = json.loads(results_file.read_text())
            continue
        print(
            f"== {name}: bert finetune {CONFIG_ROOT / 'finetune' / f'{name}.yaml'} -> {cfg.train.output_dir}",
            flush=True,
        )
        summaries[name] = finetune(cfg)
    verdict = glue_verdict(
        summaries, str(model_path), list(next(iter(configs.values())).train.seeds), configs
    )
    output.mkdir(parents=True, exist_ok=True)
    fs.atomic_write_text(output / "glue.json", json.dumps(verdict, indent=2) + "\n")
    table = markdown(verdict)
    fs.atomic_write_text(output / "glue.md", table + "\n")
    print(table)
    print(f"written: {output / 'glue.json'}, {output / 'glue.md'}")
    from bert.card import add_glue_table

    if add_glue_table(model_path, table):
        print(f"the table is in the model card too: {Path(model_path) / 'README.md'}")
    log_to_dashboards(verdict, table, next(iter(configs.values())), output, label)
    return verdict


def budget(cfg: FinetuneConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """What a task's models were trained on: pairs (after `task.max_train_examples`), epochs, batch, rate."""
    return {
        "train_pairs": summary["seeds"][0].get("train_examples"),
        "max_train_examples": cfg.task.max_train_examples,
        "epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "global_batch_size": cfg.train.global_batch_size,
        "lr": cfg.optimizer.lr,
        "max_length": cfg.train.max_length,
    }


def glue_verdict(
    summaries: dict[str, dict[str, Any]],
    model: str,
    seeds: list[int],
    configs: dict[str, FinetuneConfig] | None = None,
) -> dict[str, Any]:
    """One entry per task and dev split, each with its primary metric over seeds, its score (the mean of
    the task's metrics) and the task's budget; and the GLUE average (module docstring)."""
    entries = []
    for task, summary in summaries.items():
        primary = summary["main_metric"]
        splits = list(summary["seeds"][0]["dev"])
        for split in splits:
            stats = summary["mean_std"][f"{split}/{primary}"]
            others = {
                key.split("/", 1)[1]: value
                for key, value in summary["mean_std"].items()
                if key.startswith(f"{split}/") and key != f"{split}/{primary}"
            }
            metrics = [stats["mean"], *(v["mean"] for v in others.values())]
            entries.append(
                {
                    "entry": ENTRY_NAMES.get(split, task),
                    "task": task,
                    "split": split,
                    "metric": primary,
                    "mean": stats["mean"],
                    "std": stats["std"],
                    "n": stats.get("n", len(summary["seeds"])),
                    "seeds": {str(r["seed"]): r["dev"][split][primary] for r in summary["seeds"]},
                    "other_metrics": others,
                    "score": sum(metrics) / len(metrics),
                    "budget": budget(configs[task], summary) if configs else None,
                }
            )
    task_scores: dict[str, list[float]] = {}
    for e in entries:
        task_scores.setdefault(e["task"], []).append(e["score"])
    scores = {task: sum(v) / len(v) for task, v in task_scores.items()}
    average = sum(scores.values()) / len(scores)
    return {
        "model": model,
        "seeds": seeds,
        "entries": entries,
        "task_scores": scores,
        "average": average,
        "average_rule": AVERAGE_RULE,
    }


AVERAGE_RULE = (
    "mean over tasks of each task's score; a task's score is the mean of its metrics (MRPC, QQP: F1 and "
    "accuracy; STS-B: Pearson and Spearman) and of its dev sets (MNLI: matched and mismatched), as GLUE does"
)


def _mean_std(mean: float, std: float, n: int) -> str:
    """`mean ± std` x 100, or the mean alone for one seed (no spread was measured)."""
    return f"{mean * 100:.2f} ± {std * 100:.2f}" if n > 1 else f"{mean * 100:.2f}"


def markdown(verdict: dict[str, Any]) -> str:
    """The verdict as markdown tables (metrics x 100): results, then each task's training budget."""
    lines = [
        f"GLUE dev results of {verdict['model']}",
        "",
        "| task | metric | mean ± std | seeds | per seed | other metrics | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in verdict["entries"]:
        per_seed = ", ".join(f"{seed}: {value * 100:.2f}" for seed, value in e["seeds"].items())
        others = ", ".join(
            f"{k} {_mean_std(v['mean'], v['std'], e['n'])}" for k, v in e["other_metrics"].items()
        )
        lines.append(
            f"| {e['entry']} | {e['metric']} | {_mean_std(e['mean'], e['std'], e['n'])} | {e['n']} | "
            f"{per_seed} | {others or '-'} | {e['score'] * 100:.2f} |"
        )
    tasks = len(verdict.get("task_scores") or verdict["entries"])
    lines.append(
        f"| **average** | GLUE score of {tasks} task(s) | | | | | **{verdict['average'] * 100:.2f}** |"
    )
    lines += ["", f"Average: {verdict.get('average_rule', AVERAGE_RULE)}."]
    budgets = {e["task"]: e.get("budget") for e in verdict["entries"] if e.get("budget")}
    if budgets:
        lines += [
            "",
            "| task | train pairs | subsample | epochs | max steps | batch | lr | max length |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for task, b in budgets.items():
            lines.append(
                f"| {task} | {b['train_pairs']} | {b['max_train_examples'] or 'all'} | {b['epochs']:g} | "
                f"{b.get('max_steps') or '-'} | {b['global_batch_size']} | {b['lr']:g} | {b['max_length']} |"
            )
    return "\n".join(lines)


def log_to_dashboards(
    verdict: dict[str, Any], table: str, cfg: FinetuneConfig, output: Path, label: str = "model"
) -> None:
    """The verdict in TensorBoard (scalars and the table as text) and wandb (a table and the average in the
    summary, in the model's group), as configured."""
    from bert.tracking import tracker_setup

    trackers, init_kwargs = tracker_setup(
        cfg.logging, _run_id(output), f"{label}-glue", str(output), job_type="glue", group=label
    )
    if "tensorboard" in trackers:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is an optional extra
            SummaryWriter = None
        if SummaryWriter is not None:
            writer = SummaryWriter(str(output / "tensorboard"))
            for e in verdict["entries"]:
                writer.add_scalar(f"glue/{e['entry']}", e["mean"], 0)
            writer.add_scalar("glue/average", verdict["average"], 0)
            writer.add_text("glue/table", table, 0)
            writer.close()
    if "wandb" in trackers:
        import wandb

        kwargs = init_kwargs.get("wandb", {})
        kwargs["config"] = {"model": verdict["model"], "seeds": verdict.get("seeds")}
        run = wandb.init(project=cfg.logging.project, **kwargs)
        columns = ["task", "metric", "mean", "std", "seeds"]
        rows = [[e["entry"], e["metric"], e["mean"], e["std"], e["n"]] for e in verdict["entries"]]
        run.log({"glue/table": wandb.Table(columns=columns, data=rows), "glue/average": verdict["average"]})
        run.summary.update(
            {
                "glue/average": verdict["average"],
                **{f"glue/{e['entry']}": e["mean"] for e in verdict["entries"]},
            }
        )
        run.finish()


def _run_id(output: Path) -> str:
    import hashlib

    return hashlib.sha1(("glue:" + str(output.resolve())).encode()).hexdigest()[:8]
