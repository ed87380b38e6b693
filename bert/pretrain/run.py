"""A pretraining run: `Run.start` (lock, data, model, resume, dashboards), saving, logging and export, and
`Run.close`, the one teardown.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bert import checkpoint as ckpt
from bert import fs
from bert.budget import Budget, parse_duration
from bert.card import pretraining_card, provenance
from bert.config import PretrainConfig, flatten, save_config, to_dict
from bert.errors import UserError
from bert.export import write_export
from bert.optim import Schedule, apply_hyperparameters, build_optimizer
from bert.pretrain.step import Pace, RunState, TrainingParts, forward_functions, skips_on_device
from bert.progress import Progress
from bert.sampler import EpochDataset, ShardedBatchSampler
from bert.tracking import MetricsFile, finish_trackers, new_run_id, start_trackers, tracker_setup
from bert.training import (
    StopSignal,
    all_reduce_sum,
    broadcast_token,
    check_shared_folder,
    main_process_first,
    make_accelerator,
    prepare_model,
    print0,
    use_static_shapes,
)

# ------------------------------------------------------------------------------------------ run state


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
        self.set_aside: list[Path] = []
        self.resuming = cfg.train.resume
        self.provenance: dict[str, Any] = {}  # where and how the run ran, for the model card (bert/card.py)

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
                model_width=cfg.model.hidden_size,
            )
            accelerator = run.accelerator
            run.main = accelerator.is_main_process
            check_shared_folder(accelerator, run.run_dir)
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
            run.print(run.startup_summary())
        except BaseException:
            run.close()
            raise
        return run

    def startup_summary(self) -> str:
        """The block a cluster log starts with: who runs, on what, with which batch, data and folder."""
        import os

        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        n = accelerator.num_processes
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", n))
        nodes = max(1, n // max(per_node, 1))
        device = accelerator.device
        backend = "-"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
        b, k = cfg.train.batch_size, cfg.train.gradient_accumulation_steps
        params = sum(p.numel() for p in accelerator.unwrap_model(self.model).parameters())
        m = cfg.model
        paths = ", ".join(self.fast_paths.names()) or "none"
        where = f"resuming at step {state.step} (epoch {state.epoch})" if state.step else "starting at step 0"
        lines = [
            f"run: {n} process(es) on {nodes} node(s), {device.type}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f", backend {backend}; {accelerator.precision_line}",
            f"batch: {b} per device x {k} accumulation x {n} process(es) = {b * k * n} sequences a step, at most "
            f"{b * k * n * cfg.data.max_seq_length:,} tokens; static shapes {'on' if self.static_shapes else 'off'}",
            f"model: L{m.num_hidden_layers}/H{m.hidden_size}/A{m.num_attention_heads}, {params:,} "
            f"parameters, vocabulary {m.vocab_size} (tokenizer {self.tokenizer_vocab}); attention "
            f"{m.attn_implementation}; fast paths: {paths}; compile {'on' if cfg.train.compile else 'off'}",
            f"data: {self.prepared} ({len(self.train_set):,} training pairs)",
            f"output: {self.run_dir.resolve()}; {where}",
        ]
        return "\n".join(lines)

    def _data(self) -> None:
        """Training and evaluation batches: `bert prepare`'s folder, or prepared now (main process first)."""
        from bert.data.collator import build_collator
        from bert.data.prepare import load_prepared, run_prepare

        cfg, accelerator = self.cfg, self.accelerator
        with main_process_first(accelerator, "bert/prepare"):
            prepared = run_prepare(cfg, progress=self.main)
        self.prepared = Path(prepared)
        splits, data_meta = load_prepared(prepared)
        self.provenance = provenance(accelerator, self.prepared, data_meta)
        self.tokenizer_dir = Path(prepared) / "tokenizer"
        vocab_size = data_meta.get("vocab_size")
        self.tokenizer_vocab = vocab_size if isinstance(vocab_size, int) else cfg.model.vocab_size
        multiple = cfg.train.pad_vocab_multiple
        rows = -(-self.tokenizer_vocab // multiple) * multiple
        if rows != cfg.model.vocab_size:
            padded = f", padded to a multiple of {multiple}" if rows != self.tokenizer_vocab else ""
            self.print(
                f"model.vocab_size {cfg.model.vocab_size} -> {rows} (the tokenizer's {vocab_size}{padded})"
            )
            cfg.model.vocab_size = rows
        self.static_shapes = use_static_shapes(accelerator.device, cfg.train)
        self.collator = build_collator(prepared, cfg.data, cfg.train.seed, self.static_shapes)
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
            _load_init(model, cfg.train.init_from, cfg.train.pad_vocab_multiple)
        model, paths = prepare_model(model, accelerator.device, cfg.train, compile_in_place=False)
        self.fast_paths = paths
        self.cross_entropy = paths.cross_entropy()
        optimizer = build_optimizer(model, cfg.optimizer)
        self.schedule = Schedule(cfg.optimizer, cfg.train.max_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        max_time = cfg.train.max_time
        budget = Budget(
            cfg.train.max_steps, parse_duration(max_time) if max_time else None, cfg.train.max_tokens
        )
        self.parts = TrainingParts(
            cfg,
            accelerator,
            self.model,
            self.optimizer,
            self.schedule,
            self.cross_entropy,
            self.stop,
            budget,
            *forward_functions(self.model, self.cross_entropy, cfg.train),
            skip_on_device=skips_on_device(accelerator, self.optimizer),
        )

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
            self.parts.pace = Pace(exact=accelerator.num_processes == 1)
            return
        apply_hyperparameters(self.optimizer, cfg.optimizer)
        state = self.state
        state.step = meta["step"]
        state.epoch, state.index = meta["data"]["epoch"], self._resumed_index(meta)
        state.counters.update(meta.get("counters", {}))
        state.last_eval = meta.get("eval", {})
        self.run_id = meta.get("run_id") or self.run_id
        counters = state.counters
        self.parts.pace = Pace(
            accelerator.num_processes == 1, state.step, counters["train_seconds"], counters["tokens"]
        )
        self.metrics_lines = meta.get("metrics_lines", 0)
        self.print(
            f"resumed from {folder} (step {state.step}, epoch {state.epoch}, micro-batch {state.index})"
        )
        saved_processes = meta.get("num_processes", accelerator.num_processes)
        if saved_processes != accelerator.num_processes:
            # dropout cannot continue the saved streams on another number of processes: fresh, seeded ones
            set_seed(cfg.train.seed + 1_000_003 * state.step + accelerator.process_index)
            self.print(
                f"resumed on {accelerator.num_processes} process(es), saved on {saved_processes}: the same "
                "examples and masks in every step; new dropout streams"
            )
        changed = _changed_settings(meta.get("config", {}), to_dict(cfg))
        if changed:
            self.print(
                f"resuming with changed settings (they apply from step {state.step + 1} on): {changed}"
            )

    def _resumed_index(self, meta: dict[str, Any]) -> int:
        """The saved data position as a micro-batch index of this run's split of the global batch."""
        data, cfg = meta["data"], self.cfg
        saved_cfg = meta.get("config", {}).get("train", {})
        examples = data.get("examples")
        if examples is None:  # older checkpoints: index x per-device batch x processes
            examples = (
                data["index"]
                * saved_cfg.get("batch_size", cfg.train.batch_size)
                * meta.get("num_processes", self.accelerator.num_processes)
            )
        micro_batch = cfg.train.batch_size * self.accelerator.num_processes
        if examples % micro_batch:
            raise UserError(
                f"the checkpoint's data position ({examples} examples into epoch {data['epoch']}) is not a whole "
                f"number of micro-batches of {micro_batch} (train.batch_size x processes)"
            )
        return examples // micro_batch

    def _choose_checkpoint(self, before: Path | None = None) -> Path | None:
        """Main process decides (and cleans, and checks compatibility); every process gets its answer."""
        chosen = ""
        if self.main:
            warn = lambda line: print(f"warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
            if before is None:
                self.set_aside = self.checkpointer.clean(warn)
                self.resuming = self._fresh_start_rules()
            if self.resuming:
                candidates = ckpt.list_checkpoints(self.run_dir)
                if before is not None:
                    candidates = [c for c in candidates if c.name < before.name]
                for folder in reversed(candidates):
                    problem = ckpt.verify(folder)
                    if problem is None:
                        chosen = str(folder)
                        break
                    warn(f"checkpoint {folder.name}: {problem}; trying the previous one")
                if not chosen and (candidates or self.set_aside):
                    damaged = len(candidates) + len(self.set_aside)
                    raise UserError(
                        f"{self.run_dir}: no usable checkpoint left ({damaged} damaged), kept in "
                        f"{self.run_dir / ckpt.CHECKPOINTS}; refusing to start over on top of them: "
                        "train.resume=false train.overwrite=true starts over"
                    )
                if chosen:
                    meta = ckpt.read_meta(chosen)
                    ckpt.check_compatible(Path(chosen), meta.get("compat", {}), self.compat)
        chosen = broadcast_token(self.accelerator, chosen)
        return Path(chosen) if chosen else None

    def _fresh_start_rules(self) -> bool:
        """Whether to resume. resume=false in a folder that holds a run: refuse, or with overwrite=true remove
        that run, once: a run that this same command started by overwriting (a scheduler re-running it after
        a preemption) is resumed, not deleted again."""
        if self.cfg.train.resume:
            return True
        old = [self.run_dir / name for name in ("checkpoints", "export", "metrics.jsonl")]
        if not ckpt.list_checkpoints(self.run_dir) and not (self.run_dir / "export").exists():
            self._mark_overwrite()
            return False
        if not self.cfg.train.overwrite:
            raise UserError(
                f"{self.run_dir} holds an earlier run (checkpoints or export) and train.resume=false: add "
                "train.overwrite=true to delete it and start over, or choose another train.output_dir"
            )
        marker = self.run_dir / OVERWRITE_MARKER
        if marker.is_file() and marker.read_text().strip() == self._command_fingerprint():
            self.print(
                f"train.overwrite=true: {self.run_dir} holds the run this same command started (re-run after a "
                "preemption?): resuming it, not deleting it"
            )
            return True
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
        self._mark_overwrite()
        return False

    def _command_fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(to_dict(self.cfg), sort_keys=True).encode()).hexdigest()[:16]

    def _mark_overwrite(self) -> None:
        """Remember which command started this run from scratch (train.resume=false)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fs.atomic_write_text(self.run_dir / OVERWRITE_MARKER, self._command_fingerprint() + "\n")

    def _logging(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        try:
            self.sampler = ShardedBatchSampler(
                len(self.train_set),
                cfg.train.batch_size,
                accelerator.num_processes,
                accelerator.process_index,
                cfg.train.seed,
                self.state.epoch,
                self.state.index,
                accumulation=cfg.train.gradient_accumulation_steps,
            )
        except ValueError as err:  # fewer training pairs than one global batch
            raise UserError(
                f"{self.prepared}: {err}; use a larger corpus or a smaller train.batch_size"
            ) from None
        cuda = accelerator.device.type == "cuda"
        workers = cfg.train.num_workers if cfg.train.num_workers is not None else (2 if cuda else 0)
        loader = DataLoader(
            EpochDataset(self.train_set),
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=workers,
            # a step takes k micro-batches at once: keep at least one step's worth ready per worker
            prefetch_factor=max(2, cfg.train.gradient_accumulation_steps) if workers else None,
            persistent_workers=workers > 0,
            pin_memory=cuda,  # the batches' pin_memory(): their copies to the GPU run asynchronously
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
            job_type="pretrain",
            config=cfg,
        )
        if trackers:
            start_trackers(
                accelerator, cfg.logging.project, cfg, init_kwargs, PRETRAIN_METRICS, self.state.step
            )
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

    def clock(self, hooks: Any) -> Any:
        """The run's clock: seconds of training so far, this launch's added to the resumed checkpoint's."""
        start, before = hooks.clock(), float(self.state.counters.get("train_seconds", 0.0))
        return lambda: before + hooks.clock() - start

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
        """Whether the evaluation of `step` was logged, in this launch or (a checkpoint's) before it."""
        if self.state.last_eval.get("step") == step:
            return True
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
        return self.checkpointer.save(state.step, self.model, self.optimizer, self.meta(), self.tokenizer_dir)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records beside the weights: data position, counters, last evaluation, config,
        and the facts of a model card (bert/card.py)."""
        state = self.state
        return {
            "data": {
                "epoch": state.epoch,
                "index": state.index,
                "examples": self.sampler.examples_done(state.index),  # over all processes: any split resumes
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
            "provenance": self.provenance,
            "step": state.step,
        }

    def export(self) -> None:
        """The final model in the Hugging Face format, with its tokenizer (main process writes); the
        vocabulary's padding rows are dropped: the export has exactly the tokenizer's vocabulary."""
        import dataclasses

        from bert.model import BertForPreTraining
        from bert.model.convert import trim_vocabulary

        state_dict = self.accelerator.get_state_dict(self.model)  # every process (collective if sharded)
        self.export_dir = self.run_dir / "export"
        if self.main:
            export = BertForPreTraining(dataclasses.replace(self.cfg.model, vocab_size=self.tokenizer_vocab))
            export.load_state_dict(trim_vocabulary(state_dict, self.tokenizer_vocab))
            meta = self.meta()
            meta["config"]["model"] = export.config.to_dict()
            parameters = sum(p.numel() for p in export.parameters())
            card = pretraining_card(meta, parameters, name=self.run_dir.resolve().name)
            write_export(export, self.tokenizer_dir, self.export_dir, card)
            seconds = time.time() - self.started
            self.print(
                f"done: {self.state.step} steps in {seconds:.0f}s; model exported to {self.export_dir}"
            )
        self.accelerator.wait_for_everyone()

    def result(self, stopped: bool) -> dict[str, Any]:
        final = next((h for h in reversed(self.history) if "eval/mlm_loss" in h), None)
        last = self.state.last_eval
        if final is None and last:  # evaluated before this launch (a finished run run again)
            final = {"step": last["step"], **{f"eval/{k}": v for k, v in last.items() if k != "step"}}
        out = {"step": self.state.step, "stopped": stopped, "history": self.history, "metrics": final}
        if not stopped:
            out["export"] = self.export_dir
        return out

    def close(self) -> None:
        """The one teardown, whatever ended the run: progress, trackers, signal handlers, the lock."""
        if self.progress is not None:
            self.progress.close()
        if self.trackers_started:
            last = self.state.last_eval
            finish_trackers(self.accelerator, {f"eval/{k}": v for k, v in last.items() if k != "step"})
            self.accelerator.end_training()
        self.stop.restore()
        if self.lock is not None:
            self.lock.release()


# ------------------------------------------------------------------------------------------ set-up helpers

OVERWRITE_MARKER = ".started_fresh"
"""In a run folder: the fingerprint of the command that started the run with train.resume=false."""

PRETRAIN_METRICS = ["train/loss", "eval/mlm_loss", "eval/mlm_accuracy", "eval/nsp_accuracy"]
"""The metrics TensorBoard's HParams view compares pretraining runs by."""


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


_RESUME_SETTINGS = (
    "optimizer.",
    "train.max_steps",
    "train.max_time",
    "train.max_tokens",
    "train.batch_size",
    "train.gradient_accumulation_steps",
)
"""Settings that may change on resume and apply from the resumed step on (module docstring)."""


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'optimizer.lr: 0.0001 -> 5e-05; ...' for the resumable settings that differ."""
    old, new = flatten(saved), flatten(current)
    keys = [k for k in new if k.startswith(_RESUME_SETTINGS) and k in old and old[k] != new[k]]
    return "; ".join(f"{k}: {json.dumps(old[k])} -> {json.dumps(new[k])}" for k in keys)


def _load_init(model: Any, folder: str, pad_vocab_multiple: int = 1) -> None:
    """`train.init_from`: weights only (not a resume), from an export or any Hugging Face BERT folder. Its
    vocabulary may be this model's without the padding rows (train.pad_vocab_multiple)."""
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
    padded_source = -(-source_cfg["vocab_size"] // pad_vocab_multiple) * pad_vocab_multiple
    if padded_source == own_cfg["vocab_size"]:
        source_cfg["vocab_size"] = own_cfg["vocab_size"]  # the same vocabulary, padded here
    differ = [
        f"model.{k}: {source_cfg[k]!r} (init_from) vs {own_cfg[k]!r}"
        for k in shape_keys
        if source_cfg[k] != own_cfg[k]
    ]
    if differ:
        raise UserError(
            f"train.init_from={folder}: the model differs in {'; '.join(differ)} (the config sets the model; "
            "leave its model section out to take the folder's shape)"
        )
    state = convert.normalize_keys(convert.read_state_dict(folder), model.base_model_prefix)
    # phase 2 may extend the position table: the saved rows are copied, the new ones keep their init
    convert.load_weights(
        model, state, f"train.init_from={folder}", extend_positions=True, extend_vocabulary=True
    )
