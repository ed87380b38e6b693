"""What a pretraining run reports: metrics.jsonl (each step once, even after a crash and a resume), the
dashboards (TensorBoard, wandb: bert/tracking.py), the progress output, the lines it prints, and the history
`pretrain` returns. Only the main process writes and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bert.config import PretrainConfig
from bert.progress import Progress
from bert.tracking import MetricsFile, finish_trackers, start_trackers, tracker_setup
from bert.training import print0

PRETRAIN_METRICS = ["train/loss", "eval/mlm_loss", "eval/mlm_accuracy", "eval/nsp_accuracy"]
"""The metrics TensorBoard's HParams view compares pretraining runs by."""


class RunReport:
    """The run's outputs for people and dashboards; `start` opens them at the (resumed) step."""

    def __init__(self, run_dir: Path, accelerator: Any) -> None:
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.main = accelerator is None or accelerator.is_main_process
        self.history: list[dict[str, Any]] = []
        self.metrics_file: MetricsFile | None = None
        self.progress: Progress | None = None
        self.trackers_started = False

    def start(self, cfg: PretrainConfig, run_id: str, metrics_lines: int, step: int) -> None:
        """metrics.jsonl cut back to what the resumed checkpoint had seen, the trackers (continuing the
        checkpoint's dashboard run), the progress output."""
        self.metrics_file = MetricsFile(self.run_dir / "metrics.jsonl", enabled=self.main)
        if self.main:
            self.metrics_file.truncate(metrics_lines)  # each step once after a resume
        trackers, init_kwargs = tracker_setup(
            cfg.logging,
            run_id,
            cfg.logging.run_name or self.run_dir.resolve().name,
            str(self.run_dir),
            resumed_step=step,
            job_type="pretrain",
            config=cfg,
        )
        if trackers:
            start_trackers(self.accelerator, cfg.logging.project, cfg, init_kwargs, PRETRAIN_METRICS, step)
            self.trackers_started = True
        self.progress = Progress(
            cfg.train.max_steps,
            step,
            desc="pretrain",
            enabled=self.main and cfg.logging.progress_bar,
            interval=cfg.logging.progress_interval,
        )

    def print(self, message: str) -> None:
        """A line on the main process that does not break the progress bar."""
        if self.progress is not None and self.main:
            self.progress.write(message)
        elif self.accelerator is not None:
            print0(self.accelerator, message)
        else:
            print(message, flush=True)

    def log(self, kind: str, figures: dict[str, float], step: int) -> None:
        """Send `kind/` figures of `step` to the trackers and metrics.jsonl; echo eval lines (and train lines
        when there is no progress output)."""
        logs = {f"{kind}/{name}": value for name, value in figures.items()}
        if self.trackers_started:
            self.accelerator.log(logs, step=step)
        self.history.append({"step": step, **logs})
        self.metrics_file.append({"step": step, **logs})
        if kind == "eval" or not (self.progress and self.progress.enabled):
            text = " ".join(
                f"{name}={value:.4g}" for name, value in figures.items() if isinstance(value, float)
            )
            self.print(f"step {step} {kind}: {text}")

    def evaluated(self, step: int) -> bool:
        """Whether this launch logged the evaluation of `step`."""
        return any(h["step"] == step and "eval/mlm_loss" in h for h in self.history)

    def final_eval(self, last_eval: dict[str, Any]) -> dict[str, Any] | None:
        """The last evaluation as logged figures: this launch's, else the resumed checkpoint's."""
        final = next((h for h in reversed(self.history) if "eval/mlm_loss" in h), None)
        if final is None and last_eval:  # evaluated before this launch (a finished run run again)
            final = {
                "step": last_eval["step"],
                **{f"eval/{k}": v for k, v in last_eval.items() if k != "step"},
            }
        return final

    def close(self, last_eval: dict[str, Any]) -> None:
        """The progress output and the trackers (their summary: the last evaluation)."""
        if self.progress is not None:
            self.progress.close()
        if self.trackers_started:
            finish_trackers(self.accelerator, {f"eval/{k}": v for k, v in last_eval.items() if k != "step"})
            self.accelerator.end_training()
