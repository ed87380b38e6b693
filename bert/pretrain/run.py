"""A pretraining run: `Run.start` (lock, data, model, resume, dashboards), saving, logging and export, and
`Run.close`, the one teardown.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bert import checkpoint as ckpt
from bert import fs
from bert.budget import Budget, parse_duration
from bert.card import export_card, provenance
from bert.config import PretrainConfig, save_config, to_dict
from bert.errors import UserError
from bert.export import write_export
from bert.optim import Schedule, apply_hyperparameters, build_optimizer
from bert.pretrain.report import RunReport
from bert.pretrain.resume import Resume, Resumed, changed_settings, compat_keys, resumed_index
from bert.pretrain.step import Pace, RunState, TrainingParts, forward_functions, skips_on_device
from bert.progress import Progress
from bert.sampler import EpochDataset, ShardedBatchSampler
from bert.tracking import new_run_id, tracker_setup
from bert.training import (
    StopSignal,
    broadcast_token,
    check_shared_folder,
    main_process_first,
    make_accelerator,
    prepare_model,
    use_static_shapes,
)

# ------------------------------------------------------------------------------------------------ the run


@dataclass
class RunData:
    """The prepared data a run trains and evaluates on (`load_run_data`)."""

    prepared: Path  # the prepared folder (bert prepare)
    meta: dict[str, Any]  # its meta.json
    tokenizer_dir: Path
    tokenizer_vocab: int  # the tokenizer's vocabulary (the model's may be padded above it)
    train_set: Any
    eval_loader: Any  # prepared by Accelerate
    collator: Any
    static_shapes: bool


class Run:
    """Everything one pretraining run holds, set up by `start` and torn down by `close`; every part is
    declared here, set by one step of `start`."""

    def __init__(self, cfg: PretrainConfig) -> None:
        # `_data` replaces it once, by a copy whose model vocabulary is padded: the config is never mutated
        self.cfg = cfg
        self.run_dir = Path(cfg.train.output_dir)
        self.state = RunState()
        self.stop = StopSignal()
        self.lock: fs.RunLock | None = None
        self.accelerator: Any = None
        self.main = True
        self.checkpointer: ckpt.Checkpointer | None = None
        self.provenance: dict[str, Any] = {}  # where and how the run ran, for the model card (bert/card.py)
        self.data: RunData | None = None
        self.parts: TrainingParts | None = None  # model, optimizer, schedule, loss, budget, pace
        self.fast_paths: Any = None
        self.compat: dict[str, Any] = {}  # what a checkpoint must agree on to be resumed
        self.run_id = new_run_id()  # the dashboard run; a resumed checkpoint's replaces it
        self.metrics_lines = 0  # metrics.jsonl lines the resumed checkpoint had seen
        self.sampler: ShardedBatchSampler | None = None
        self.batches: Any = None  # the training loader's iterator
        self.report = RunReport(self.run_dir, None)  # metrics.jsonl, dashboards, progress, printed lines
        self.started = 0.0
        self.export_dir: Path | None = None

    @classmethod
    def start(cls, cfg: PretrainConfig) -> Run:
        """Lock the run folder, prepare the data, build the model, resume if a checkpoint verifies."""
        import logging

        from accelerate.utils import set_seed

        run = cls(cfg)
        try:
            # Accelerate warns at every save that the tied MLM decoder is stored once: expected
            logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
            run._accelerator()
            set_seed(cfg.train.seed)  # Python, NumPy and torch: the same initial weights on every process
            run._data()
            run._model()
            run._resume()
            run._loader()
            run._dashboards()
            run.print(startup_summary(run))
        except BaseException:
            run.close()
            raise
        return run

    @property
    def model(self) -> Any:
        return self.parts.model

    @property
    def optimizer(self) -> Any:
        return self.parts.optimizer

    @property
    def eval_loader(self) -> Any:
        return self.data.eval_loader

    def _accelerator(self) -> None:
        """Accelerate (its precision and trackers), the shared-folder check, the run lock, the checkpointer."""
        cfg = self.cfg
        # the trackers to start (wandb's mode decided now); their run id comes with the checkpoint
        log_with, _ = tracker_setup(cfg.logging, "", "", str(self.run_dir))
        self.accelerator = accelerator = make_accelerator(
            cfg.train.mixed_precision,
            self.run_dir,
            log_with=log_with,
            gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            model_width=cfg.model.hidden_size,
        )
        self.main = accelerator.is_main_process
        self.report = RunReport(self.run_dir, accelerator)
        check_shared_folder(accelerator, self.run_dir)
        if self.main:
            self.lock = fs.RunLock(self.run_dir).acquire()
        self.checkpointer = ckpt.Checkpointer(
            self.run_dir, accelerator, broadcast_token(accelerator, fs.unique_token()), cfg.train.keep_last
        )

    def _data(self) -> None:
        """The prepared data (main process first), and the config with the model's vocabulary padded."""
        self.data = load_run_data(self.cfg, self.accelerator, self.main)
        self.provenance = provenance(self.accelerator, self.data.prepared, self.data.meta)
        multiple = self.cfg.train.pad_vocab_multiple
        rows = -(-self.data.tokenizer_vocab // multiple) * multiple
        if rows != self.cfg.model.vocab_size:
            padded = f", padded to a multiple of {multiple}" if rows != self.data.tokenizer_vocab else ""
            self.print(
                f"model.vocab_size {self.cfg.model.vocab_size} -> {rows} (the tokenizer's "
                f"{self.data.meta.get('vocab_size')}{padded})"
            )
            model = dataclasses.replace(self.cfg.model, vocab_size=rows)
            self.cfg = dataclasses.replace(self.cfg, model=model)

    def _model(self) -> None:
        """The model (from train.init_from's weights when set), its speedups, the optimizer and schedule."""
        from bert.model import BertForPreTraining

        cfg, accelerator = self.cfg, self.accelerator
        model = BertForPreTraining(cfg.model)
        if cfg.train.init_from:
            _load_init(model, cfg.train.init_from, cfg.train.pad_vocab_multiple)
        model, self.fast_paths = prepare_model(model, accelerator.device, cfg.train, compile_in_place=False)
        loss = self.fast_paths.pretraining_loss()
        model, optimizer = accelerator.prepare(model, build_optimizer(model, cfg.optimizer))
        max_time = cfg.train.max_time
        budget = Budget(
            cfg.train.max_steps, parse_duration(max_time) if max_time else None, cfg.train.max_tokens
        )
        self.parts = TrainingParts(
            cfg, accelerator, model, optimizer, Schedule(cfg.optimizer, cfg.train.max_steps), loss,
            self.stop, budget, *forward_functions(model, loss, cfg.train),
            skip_on_device=skips_on_device(accelerator, optimizer),
        )  # fmt: skip

    def _resume(self) -> None:
        """Continue from the newest usable checkpoint (bert/pretrain/resume.py), or start fresh."""
        from accelerate.utils import set_seed

        cfg, accelerator = self.cfg, self.accelerator
        self.compat = compat_keys(cfg, self.data.tokenizer_dir, accelerator.num_processes)
        resumed = Resume(cfg, self.checkpointer, self.compat, self.print).restore(self.model, self.optimizer)
        if resumed is None:
            set_seed(cfg.train.seed + accelerator.process_index)  # different dropout on every process
            self.parts.pace = Pace(exact=accelerator.num_processes == 1)
            return
        self._continue_from(resumed)

    def _continue_from(self, resumed: Resumed) -> None:
        """The run's state from a restored checkpoint: step, data position, counters, last evaluation, the
        dashboard run; and one line each for what differs from when it was saved."""
        from accelerate.utils import set_seed

        cfg, accelerator, state, meta = self.cfg, self.accelerator, self.state, resumed.meta
        apply_hyperparameters(self.optimizer, cfg.optimizer)
        state.step = meta["step"]
        state.epoch = meta["data"]["epoch"]
        state.index = resumed_index(meta, cfg.train.batch_size, accelerator.num_processes)
        state.counters.update(meta.get("counters", {}))
        state.last_eval = meta.get("eval", {})
        self.run_id = meta.get("run_id") or self.run_id
        counters = state.counters
        self.parts.pace = Pace(
            accelerator.num_processes == 1, state.step, counters["train_seconds"], counters["tokens"]
        )
        self.metrics_lines = meta.get("metrics_lines", 0)
        self.print(
            f"resumed from {resumed.folder} (step {state.step}, epoch {state.epoch}, micro-batch {state.index})"
        )
        saved_processes = meta.get("num_processes", accelerator.num_processes)
        if saved_processes != accelerator.num_processes:
            # dropout cannot continue the saved streams on another number of processes: fresh, seeded ones
            set_seed(cfg.train.seed + 1_000_003 * state.step + accelerator.process_index)
            self.print(
                f"resumed on {accelerator.num_processes} process(es), saved on {saved_processes}: the same "
                "examples and masks in every step; new dropout streams"
            )
        changed = changed_settings(meta.get("config", {}), to_dict(cfg))
        if changed:
            self.print(
                f"resuming with changed settings (they apply from step {state.step + 1} on): {changed}"
            )

    def _loader(self) -> None:
        """The training batches from the resumed data position (bert.sampler.ShardedBatchSampler)."""
        self.sampler, loader = training_loader(self.cfg, self.accelerator, self.data, self.state)
        self.batches = iter(loader)

    def _dashboards(self) -> None:
        """config.yaml (what this run really uses), then metrics.jsonl, trackers and progress output."""
        if self.main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        self.report.start(self.cfg, self.run_id, self.metrics_lines, self.state.step)
        self.started = time.time()
        self.model.train()

    # -------------------------------------------------------------------------------------- during the run

    def clock(self, hooks: Any) -> Any:
        """The run's clock: seconds of training so far, this launch's added to the resumed checkpoint's."""
        start, before = hooks.clock(), float(self.state.counters.get("train_seconds", 0.0))
        return lambda: before + hooks.clock() - start

    @property
    def progress(self) -> Progress | None:
        return self.report.progress

    def print(self, message: str) -> None:
        """A line on the main process that does not break the progress bar."""
        self.report.print(message)

    def log(self, kind: str, figures: dict[str, float]) -> None:
        """Report `kind/` figures of the current step (an evaluation is also the checkpoint's last one)."""
        if not figures:
            return
        if kind == "eval":
            self.state.last_eval = {"step": self.state.step, **figures}
        self.report.log(kind, figures, self.state.step)

    def evaluated_at(self, step: int) -> bool:
        """Whether the evaluation of `step` was logged, in this launch or (a checkpoint's) before it."""
        return self.state.last_eval.get("step") == step or self.report.evaluated(step)

    def save(self) -> Path | None:
        """A checkpoint of the current step, unless the run is in a non-finite streak (then None)."""
        state = self.state
        if state.nonfinite_streak:
            self.print(
                f"step {state.step}: not saved, the last {state.nonfinite_streak} step(s) were non-finite "
                f"(latest healthy checkpoint: {self.checkpointer.latest() or 'none'})"
            )
            return None
        return self.checkpointer.save(
            state.step, self.model, self.optimizer, checkpoint_meta(self), self.data.tokenizer_dir
        )

    def export(self) -> None:
        """The final model as a Hugging Face folder with its tokenizer and card (`export_run`)."""
        self.export_dir = export_run(self)
        self.print(
            f"done: {self.state.step} steps in {time.time() - self.started:.0f}s; model exported to {self.export_dir}"
        )

    def result(self, stopped: bool) -> dict[str, Any]:
        final = self.report.final_eval(self.state.last_eval)
        out = {"step": self.state.step, "stopped": stopped, "history": self.report.history, "metrics": final}
        if not stopped:
            out["export"] = self.export_dir
        return out

    def close(self) -> None:
        """The one teardown, whatever ended the run: progress, trackers, signal handlers, the lock."""
        self.report.close(self.state.last_eval)
        self.stop.restore()
        if self.lock is not None:
            self.lock.release()


# ------------------------------------------------------------------------------------------ set-up helpers


def checkpoint_meta(run: Run) -> dict[str, Any]:
    """What a checkpoint records beside the weights: data position, counters, last evaluation, config, and
    the facts of a model card (bert/card.py)."""
    state = run.state
    return {
        "data": {
            "epoch": state.epoch,
            "index": state.index,
            "examples": run.sampler.examples_done(state.index),  # over all processes: any split resumes
            "batches_per_epoch": run.sampler.batches_per_epoch,
        },
        "counters": state.counters,
        "run_id": run.run_id,
        "num_processes": run.accelerator.num_processes,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "eval": state.last_eval,
        "metrics_lines": run.report.metrics_file.lines,
        "compat": run.compat,
        "config": to_dict(run.cfg),
        "provenance": run.provenance,
        "runs": what_runs(run),
        "step": state.step,
    }


def describe_attention(configured: str, paths: Any) -> str:
    """'sdpa', or 'sdpa (runs: unpadded, bucketed by length (CPU fast path))' when a fast path replaces it."""
    runs = paths.attention(configured)
    return configured if runs == configured else f"{configured} (runs: {runs})"


def what_runs(run: Run) -> dict[str, Any]:
    """What computes the steps, beside what the config asked for: the attention that runs, the fast paths,
    the precision, compile and static shapes (recorded in every checkpoint's meta.json)."""
    cfg = run.cfg
    return {
        "attention": run.fast_paths.attention(cfg.model.attn_implementation),
        "fast_paths": run.fast_paths.names(),
        "precision": run.accelerator.mixed_precision,
        "compile": cfg.train.compile,
        "static_shapes": run.data.static_shapes,
    }


def export_run(run: Run) -> Path:
    """The final model in the Hugging Face format, with its tokenizer and model card (the main process
    writes); the vocabulary's padding rows are dropped: the export has exactly the tokenizer's vocabulary."""
    from bert.model import BertForPreTraining
    from bert.model.convert import trim_vocabulary

    folder = run.run_dir / "export"
    state_dict = run.accelerator.get_state_dict(run.model)  # every process (collective if sharded)
    if run.main:
        vocab = run.data.tokenizer_vocab
        export = BertForPreTraining(dataclasses.replace(run.cfg.model, vocab_size=vocab))
        export.load_state_dict(trim_vocabulary(state_dict, vocab))
        card = export_card(checkpoint_meta(run), export, run.run_dir.resolve().name)
        write_export(export, run.data.tokenizer_dir, folder, card)
    run.accelerator.wait_for_everyone()
    return folder


def load_run_data(cfg: PretrainConfig, accelerator: Any, main: bool) -> RunData:
    """`bert prepare`'s folder (prepared now by the main process while the others wait), its evaluation
    loader (a fixed subset with train.eval_batches) and the collator of its batches."""
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared, run_prepare

    with main_process_first(accelerator, "bert/prepare"):
        prepared = Path(run_prepare(cfg, progress=main))
    splits, meta = load_prepared(prepared)
    vocab_size = meta.get("vocab_size")
    static_shapes = use_static_shapes(accelerator.device, cfg.train)
    collator = build_collator(prepared, cfg.data, cfg.train.seed, static_shapes)
    eval_set = splits["validation"]
    if len(eval_set) == 0:
        raise UserError(f"{prepared}: the validation split is empty (raise data.validation_fraction)")
    if cfg.train.eval_batches is not None:  # a fixed subset, iterated in full: the same every time
        limit = cfg.train.eval_batches * cfg.train.batch_size * accelerator.num_processes
        eval_set = eval_set.select(range(min(limit, len(eval_set))))
    loader = DataLoader(EpochDataset(eval_set), batch_size=cfg.train.batch_size, collate_fn=collator)
    return RunData(
        prepared, meta, prepared / "tokenizer", vocab_size if isinstance(vocab_size, int) else cfg.model.vocab_size,
        splits["train"], accelerator.prepare(loader), collator, static_shapes,
    )  # fmt: skip


def training_loader(
    cfg: PretrainConfig, accelerator: Any, data: RunData, state: RunState
) -> tuple[ShardedBatchSampler, DataLoader]:
    """The sampler (each process its share of every global batch, from the resumed position) and the loader."""
    try:
        sampler = ShardedBatchSampler(
            len(data.train_set),
            cfg.train.batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            cfg.train.seed,
            state.epoch,
            state.index,
            accumulation=cfg.train.gradient_accumulation_steps,
        )
    except ValueError as err:  # fewer training pairs than one global batch
        raise UserError(
            f"{data.prepared}: {err}; use a larger corpus or a smaller train.batch_size"
        ) from None
    cuda = accelerator.device.type == "cuda"
    workers = cfg.train.num_workers if cfg.train.num_workers is not None else (2 if cuda else 0)
    loader = DataLoader(
        EpochDataset(data.train_set),
        batch_sampler=sampler,
        collate_fn=data.collator,
        num_workers=workers,
        # a step takes k micro-batches at once: keep at least one step's worth ready per worker
        prefetch_factor=max(2, cfg.train.gradient_accumulation_steps) if workers else None,
        persistent_workers=workers > 0,
        pin_memory=cuda,  # the batches' pin_memory(): their copies to the GPU run asynchronously
        # its own generator: creating the iterator must not draw from the global RNG that dropout
        # uses, or a resumed run's dropout would be shifted by one draw
        generator=torch.Generator().manual_seed(cfg.train.seed + accelerator.process_index),
    )
    return sampler, loader


def startup_summary(run: Run) -> str:
    """The block a cluster log starts with: who runs, on what, with which batch, data and folder."""
    import os

    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    n = accelerator.num_processes
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", n))
    nodes = max(1, n // max(per_node, 1))
    device = accelerator.device
    backend = "-"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = torch.distributed.get_backend()
    b, k = cfg.train.batch_size, cfg.train.gradient_accumulation_steps
    params = sum(p.numel() for p in accelerator.unwrap_model(run.model).parameters())
    m = cfg.model
    paths = ", ".join(run.fast_paths.names()) or "none"
    where = f"resuming at step {state.step} (epoch {state.epoch})" if state.step else "starting at step 0"
    lines = [
        f"run: {n} process(es) on {nodes} node(s), {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", backend {backend}; {accelerator.precision_line}",
        f"batch: {b} per device x {k} accumulation x {n} process(es) = {b * k * n} sequences a step, at most "
        f"{b * k * n * cfg.data.max_seq_length:,} tokens; static shapes {'on' if run.data.static_shapes else 'off'}",
        f"model: L{m.num_hidden_layers}/H{m.hidden_size}/A{m.num_attention_heads}, {params:,} "
        f"parameters, vocabulary {m.vocab_size} (tokenizer {run.data.tokenizer_vocab}); attention "
        f"{describe_attention(m.attn_implementation, run.fast_paths)}; fast paths: {paths}; compile "
        f"{'on' if cfg.train.compile else 'off'}",
        f"data: {run.data.prepared} ({len(run.data.train_set):,} training pairs)",
        f"output: {run.run_dir.resolve()}; {where}",
    ]
    return "\n".join(lines)


def _load_init(model: Any, folder: str, pad_vocab_multiple: int = 1) -> None:
    """`train.init_from`: weights only (not a resume), from an export or any Hugging Face BERT folder. Its
    vocabulary may be this model's without the padding rows (train.pad_vocab_multiple)."""
    from bert.model import convert
    from bert.model.config import SHAPE_FIELDS, BertConfig

    source_cfg = to_dict(BertConfig.from_pretrained(folder))
    own_cfg = to_dict(model.config)
    # phase 2 may extend the position table; every other field of the weights' shape must agree
    shape_keys = [name for name in SHAPE_FIELDS if name != "max_position_embeddings"]
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
