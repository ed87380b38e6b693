"""`bert pretrain`: the MLM + NSP pretraining loop, on one CPU, one GPU, or many GPUs and nodes.

`pretrain(cfg)` is one function that reads top to bottom; evaluation, saving, logging and the stop signal
are small helpers beside it. The same code runs under `accelerate launch` and `torchrun`.

Loss normalisation. The MLM loss of an optimizer step is the sum of token losses over ALL masked tokens of
the global batch (every micro-batch of the step, on every process) divided by their count; the NSP loss is the
same over sequences. The step's micro-batches are fetched first, their masked-token and sequence counts are
all-reduced, and each micro-batch backpropagates `sum_of_its_losses / global_count * k * N`: Accelerate's
`backward` divides by k (accumulation steps) and DDP averages gradients over N processes, so the factor
k * N makes the accumulated gradient exactly that of the global objective. Hence one step of batch B equals k
accumulated steps of B / k, and N processes equal one.

Fault tolerance. A checkpoint is written every `save_every` steps (see bert.checkpoint for the layout), and
the run resumes from the latest complete one when the same command is re-run: weights, optimizer, schedule,
grad scaler, every process's RNG, the data position (bert.dist.ShardedBatchSampler starts there, no replay)
and the dashboard run. SIGTERM/SIGINT set a flag; the flag is all-reduced once per step (and per evaluation
batch), so every process finishes the current step, saves the same checkpoint and exits 0. A non-finite loss
or gradient norm on any process skips the optimizer step everywhere; too many in a row stop the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bert import checkpoint as ckpt
from bert.config import PretrainConfig, save_config, to_dict
from bert.dist import EpochDataset, ShardedBatchSampler
from bert.errors import UserError
from bert.metrics import MetricTotals, example_stats
from bert.optim import build_optimizer, build_scheduler
from bert.tracking import hparams, new_run_id, tracker_setup

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions")


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` for `cfg.train.max_steps` steps; returns the final figures."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from bert.losses import pretraining_loss
    from bert.model import BertForPreTraining

    run_dir = Path(cfg.train.output_dir)
    k = cfg.train.gradient_accumulation_steps
    # Accelerate warns at every save that the tied MLM decoder is stored once: expected, not worth a line
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)

    # --- where we start: the latest COMPLETE checkpoint of this run folder, if any
    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.train.resume else None
    meta = ckpt.read_meta(resume_from) if resume_from is not None else {}
    run_id = meta.get("run_id") or new_run_id()
    log_with, init_kwargs = tracker_setup(
        cfg.logging, run_id, cfg.logging.run_name or run_dir.resolve().name, str(run_dir)
    )
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=k,
        log_with=log_with or None,
        project_dir=str(run_dir),
        # without a GPU, Accelerate only detects torchrun's processes (gloo) when told it runs on the CPU
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    set_seed(cfg.train.seed)  # Python, NumPy and torch: same initial weights on every process

    # --- data: `bert prepare`'s folder, or prepared now (main process first; the others then reuse it)
    from bert.data.collator import build_collator
    from bert.data.prepare import load_prepared, run_prepare

    with accelerator.main_process_first():
        prepared = run_prepare(cfg, progress=main)
    splits, data_meta = load_prepared(prepared)
    tokenizer_dir = Path(prepared) / "tokenizer"
    vocab_size = _tokenizer_vocab_size(tokenizer_dir, data_meta)
    if vocab_size and vocab_size != cfg.model.vocab_size:
        _print(main, f"model.vocab_size {cfg.model.vocab_size} -> {vocab_size} (the tokenizer's)")
        cfg.model.vocab_size = vocab_size
    collator = build_collator(prepared, cfg.data, cfg.train.seed)
    train_set, eval_set = splits["train"], splits["validation"]
    if cfg.train.eval_batches is not None:  # a fixed subset, iterated in full: the same every evaluation
        limit = cfg.train.eval_batches * cfg.train.batch_size * num_processes
        eval_set = eval_set.select(range(min(limit, len(eval_set))))
    eval_loader = DataLoader(
        EpochDataset(eval_set), batch_size=cfg.train.batch_size, collate_fn=CollateWithIds(collator)
    )

    # --- model, optimizer, schedule
    model = BertForPreTraining(cfg.model)
    if cfg.train.init_from:
        _load_init(model, cfg.train.init_from)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.train.max_steps)
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    # Stepped by us once per optimizer step (Accelerate would step it num_processes times per call).
    accelerator.register_for_checkpointing(scheduler)

    # --- resume: refuse an incompatible run folder with one line, then restore every state
    compat = _compat_keys(cfg, tokenizer_dir, num_processes)
    step, epoch, index, counters = 0, 0, 0, {"skipped_steps": 0, "tokens": 0, "samples": 0}
    if resume_from is not None:
        ckpt.check_compatible(resume_from, meta.get("compat", {}), compat)
        accelerator.load_state(str(resume_from))
        step = meta["step"]
        epoch, index = meta["data"]["epoch"], meta["data"]["index"]
        counters.update(meta.get("counters", {}))
        _print(main, f"resumed from {resume_from} (step {step}, epoch {epoch}, micro-batch {index})")
    else:
        # Different dropout on every process; the RNG states are saved per process from here on.
        set_seed(cfg.train.seed + rank)

    # --- training batches from the saved position: nothing before it is read again
    sampler = ShardedBatchSampler(
        len(train_set), cfg.train.batch_size, num_processes, rank, cfg.train.seed, epoch, index
    )
    train_loader = DataLoader(
        EpochDataset(train_set),
        batch_sampler=sampler,
        collate_fn=CollateWithIds(collator),
        num_workers=cfg.train.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # its own generator: creating the iterator must not draw from the global RNG that dropout uses,
        # or a resumed run's dropout would be shifted by one draw
        generator=torch.Generator().manual_seed(cfg.train.seed + rank),
    )
    batches = iter(train_loader)

    # --- run folder, dashboards, stop signal
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.init_trackers(cfg.logging.project, config=hparams(cfg), init_kwargs=init_kwargs)
    stop = StopSignal()
    debug_sig, debug_at = _parse_debug_signal(cfg.train.debug_signal)
    ids_file = run_dir / f"example_ids_rank{rank}.jsonl" if cfg.train.record_example_ids else None
    progress = tqdm(
        total=cfg.train.max_steps,
        initial=step,
        disable=not (main and cfg.logging.progress_bar),
        desc="pretrain",
        dynamic_ncols=True,
    )
    history: list[dict[str, float]] = []
    metrics_file = run_dir / "metrics.jsonl"
    window = _Window()
    consecutive_nonfinite = 0
    start_time = time.time()
    if cfg.train.eval_at_start and step == 0:
        metrics, _ = evaluate(accelerator, model, eval_loader, stop)
        _log(
            accelerator, {f"eval/{k_}": v for k_, v in metrics.items()}, step, history, progress, metrics_file
        )

    position = {"epoch": epoch, "index": index, "batches_per_epoch": sampler.batches_per_epoch}
    state = dict(run_id=run_id, compat=compat, counters=counters, data=position, tokenizer=tokenizer_dir)
    model.train()
    while step < cfg.train.max_steps:
        # (1) the step's k micro-batches, and the global counts that normalise its losses
        micro = [next(batches) for _ in range(k)]
        micro_ids = [batch.pop("example_ids") for batch in micro]
        local_masked = sum(int((b["masked_lm_labels"] != -100).sum()) for b in micro)
        local_nsp = sum(_nsp_count(b) for b in micro)
        local_sequences = sum(b["input_ids"].shape[0] for b in micro)
        local_tokens = sum(int(b["attention_mask"].sum()) for b in micro)
        masked_total, nsp_total, sequences_total, tokens_total = _all_reduce(
            accelerator, [local_masked, local_nsp, local_sequences, local_tokens]
        )
        scale = k * num_processes  # undo backward's 1/k and DDP's 1/N: see the module docstring

        # (2) forward and backward of each micro-batch; gradients sync on the last one
        # mlm loss, nsp loss, mlm correct, nsp correct: kept on the device, read once per step (no syncs)
        step_sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
        for i, batch in enumerate(micro):
            batch = {name: value.to(accelerator.device, non_blocking=True) for name, value in batch.items()}
            with accelerator.accumulate(model):
                outputs = model(**{name: batch[name] for name in MODEL_INPUTS})
                losses = pretraining_loss(outputs, batch, mlm_normalizer=max(masked_total, 1.0))
                # nsp_loss is the mean over this micro-batch's labelled sequences: re-weight it to their share
                # of the global count (a micro-batch without NSP labels keeps the head in the graph for DDP)
                labelled = _nsp_count(batch)
                if labelled:
                    nsp = losses["nsp_loss"] * (labelled / nsp_total)
                else:
                    nsp = outputs.seq_relationship_logits.sum() * 0.0
                loss = losses["mlm_loss"] + nsp
                accelerator.backward(loss * scale)
                step_sums += torch.stack(
                    [losses["mlm_loss"].detach(), nsp.detach(), losses["mlm_correct"], losses["nsp_correct"]]
                ).double()
                if i == 0 and debug_at == ("step", step + 1):
                    os.kill(os.getpid(), debug_sig)  # testing aid: a signal in the middle of a step
                if not accelerator.sync_gradients:
                    continue
                # (3) the optimizer step: guarded against non-finite values on ANY process
                if cfg.train.debug_nan_at_step == step + 1 and rank == 0:
                    for p in model.parameters():  # testing aid: poison this process's gradients only
                        if p.grad is not None:
                            p.grad.fill_(float("nan"))
                max_norm = cfg.optimizer.max_grad_norm or float("inf")
                norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                norm = torch.as_tensor(norm, device=accelerator.device).double().reshape(1)
                local_bad = ~(torch.isfinite(norm) & torch.isfinite(step_sums[:2].sum()))
                requested = torch.full((1,), float(stop.requested), dtype=torch.float64, device=norm.device)
                # one collective per step: the NaN flag, the stop flag and the step's loss sums
                reduced = _reduce_sum(accelerator, torch.cat([local_bad.double(), requested, step_sums]))
                grad_norm = float(norm)
                nonfinite, stop_now = reduced[0] > 0, reduced[1] > 0
                if nonfinite:
                    _skip_step(accelerator, optimizer)
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:  # Accelerate's own counter must agree with ours
            raise RuntimeError(f"step {step + 1}: gradients were not synchronised on the last micro-batch")
        scheduler.step()  # the lr is a function of the step counter, skipped steps included
        step += 1
        for _ in range(k):
            epoch, index = sampler.advance(epoch, index)
        counters["tokens"] += int(tokens_total)
        counters["samples"] += int(sequences_total)
        if ids_file is not None:
            _record_ids(ids_file, step, micro_ids)

        # (4) the NaN guard's bookkeeping: a skipped step is counted and logged, never saved as a model
        if nonfinite:
            counters["skipped_steps"] += 1
            consecutive_nonfinite += 1
            _print(
                main, f"step {step}: non-finite loss or gradient norm on some process, optimizer step skipped"
            )
            if consecutive_nonfinite >= cfg.train.max_nonfinite_steps:
                accelerator.end_training()
                stop.restore()
                latest = ckpt.latest_checkpoint(run_dir)
                raise UserError(
                    f"stopping at step {step}: {consecutive_nonfinite} consecutive steps had a non-finite loss "
                    f"or gradient norm (train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); latest "
                    f"healthy checkpoint: {latest or 'none'}; try a lower optimizer.lr or more warmup",
                    exit_code=1,
                )
        else:
            consecutive_nonfinite = 0

        # (5) logging: per-head losses and accuracies, lr, grad norm, throughput, memory
        window.add(reduced[2:], masked_total, nsp_total, sequences_total, tokens_total, grad_norm)
        progress.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            logs = window.flush(scheduler.get_last_lr()[0], counters, accelerator, cfg)
            progress.set_postfix(loss=f"{logs['train/loss']:.3f}", tok_s=f"{logs['train/tokens_per_s']:.0f}")
            _log(accelerator, logs, step, history, progress, metrics_file, echo=False)

        # (6) evaluation (a stop signal may interrupt it) and checkpoints
        if not stop_now and cfg.train.eval_every and step % cfg.train.eval_every == 0:
            if debug_at == ("eval", step):
                stop.arm_in_eval(debug_sig)
            metrics, stop_now = evaluate(accelerator, model, eval_loader, stop)
            if not stop_now:
                state["eval"] = {"step": step, **metrics}
                _log(
                    accelerator,
                    {f"eval/{k_}": v for k_, v in metrics.items()},
                    step,
                    history,
                    progress,
                    metrics_file,
                )
        position.update(epoch=epoch, index=index)
        if stop_now:
            save(accelerator, model, cfg, step, state)
            progress.close()
            _print(main, f"stop signal: saved step {step} to {ckpt.step_folder(run_dir, step)}; exiting 0")
            accelerator.end_training()
            stop.restore()
            return {"step": step, "stopped": True, "history": history}
        if cfg.train.save_every and step % cfg.train.save_every == 0:
            save(accelerator, model, cfg, step, state)

    # --- the end: final evaluation, checkpoint, and the model in Hugging Face format with its tokenizer
    progress.close()
    final_metrics = next((h for h in history if h["step"] == step and "eval/mlm_loss" in h), None)
    if final_metrics is None:  # not just evaluated at this step
        final_metrics, _ = evaluate(accelerator, model, eval_loader, stop)
        final_metrics = {f"eval/{k_}": v for k_, v in final_metrics.items()}
        _log(accelerator, final_metrics, step, history, progress, metrics_file)
    if not ckpt.step_folder(run_dir, step).exists():
        save(accelerator, model, cfg, step, state)
    export_dir = run_dir / "export"
    state_dict = accelerator.get_state_dict(model)  # a collective call under FSDP
    if main:
        export = BertForPreTraining(cfg.model)
        export.load_state_dict(state_dict)
        ckpt.write_export(export, tokenizer_dir, export_dir)
        _print(main, f"done: {step} steps in {time.time() - start_time:.0f}s; model exported to {export_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    stop.restore()
    return {
        "step": step,
        "stopped": False,
        "metrics": final_metrics,
        "history": history,
        "export": export_dir,
    }


# ------------------------------------------------------------------------------------------ helpers: steps


def evaluate(accelerator: Any, model: Any, loader: Any, stop: StopSignal) -> tuple[dict[str, float], bool]:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy on the validation subset; (metrics, interrupted).

    Each batch's per-sequence sums go through `gather_for_metrics` (which drops the padding duplicates of
    the last batch); the stop flag is all-reduced after every batch so all processes leave together.
    """
    model.eval()
    totals = MetricTotals()
    interrupted = False
    with torch.no_grad():
        for batch in loader:
            batch.pop("example_ids")
            outputs = model(**{name: batch[name] for name in MODEL_INPUTS})
            stats = example_stats(
                outputs.prediction_logits,
                batch["masked_lm_labels"],
                outputs.seq_relationship_logits,
                batch.get("next_sentence_label"),
            )
            totals.add(accelerator.gather_for_metrics(stats))
            stop.tick()
            if _all_reduce(accelerator, [float(stop.requested)])[0] > 0:
                interrupted = True
                break
    model.train()
    return totals.result(), interrupted


def _skip_step(accelerator: Any, optimizer: Any) -> None:
    """Skip the optimizer step; with fp16, back the loss scale off as the scaler itself does on overflow."""
    scaler = accelerator.scaler
    if scaler is not None:
        # update(new_scale) also clears the per-optimizer "already unscaled" state for the next step
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


def save(accelerator: Any, model: Any, cfg: PretrainConfig, step: int, state: dict[str, Any]) -> Path:
    """Write the checkpoint of `step` crash-safely (every process calls it; see bert.checkpoint)."""
    run_dir = Path(cfg.train.output_dir)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if _all_reduce(accelerator, [float(not finite)])[0] > 0:
        # Never replace a healthy checkpoint with a broken model (the NaN guard should make this unreachable).
        raise UserError(f"step {step}: the model has non-finite weights; not saving", exit_code=1)
    temp, final = ckpt.temp_folder(run_dir, step), ckpt.step_folder(run_dir, step)
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))  # model, optimizer, schedule, scaler, RNG of every process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tokenizer_dir = Path(state["tokenizer"])
        if tokenizer_dir.is_dir():
            shutil.copytree(tokenizer_dir, temp / "tokenizer")
        meta = {
            "step": step,
            "data": state["data"],
            "counters": state["counters"],
            "run_id": state["run_id"],
            "num_processes": accelerator.num_processes,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "eval": state.get("eval", {}),
            "compat": state["compat"],
            "config": to_dict(cfg),
        }
        ckpt.finalize(temp, final, meta)
        ckpt.prune(run_dir, cfg.train.keep_last)  # only now that the new one is complete
    accelerator.wait_for_everyone()
    return final


def _nsp_count(batch: dict[str, torch.Tensor]) -> int:
    """Sequences with an NSP label (-100 marks MLM-only instances; no key at all in MLM-only data)."""
    labels = batch.get("next_sentence_label")
    return 0 if labels is None else int((labels != -100).sum())


def _all_reduce(accelerator: Any, values: list[float]) -> list[float]:
    """Sum a few numbers over processes in one collective (float64 on the accelerator's device)."""
    return _reduce_sum(accelerator, torch.tensor(values, dtype=torch.float64, device=accelerator.device))


def _reduce_sum(accelerator: Any, tensor: torch.Tensor) -> list[float]:
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return tensor.tolist()


class CollateWithIds:
    """The pretraining collator, plus `example_ids` (B,) so the loop can record what it consumed."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        batch["example_ids"] = torch.tensor([[ex["epoch"], ex["id"]] for ex in examples])  # (B, 2)
        return batch


class StopSignal:
    """SIGTERM/SIGINT set `requested` (the handler does nothing else); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        self._armed: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def arm_in_eval(self, sig: int) -> None:
        """Testing aid: send `sig` to this process after the next evaluation batch."""
        self._armed = sig

    def tick(self) -> None:
        if self._armed is not None:
            sig, self._armed = self._armed, None
            os.kill(os.getpid(), sig)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Window:
    """Sums of the training metrics since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0] * 4
        self.masked = self.nsp = self.sequences = self.tokens = 0.0
        self.steps = 0
        self.grad_norm = 0.0
        self.start = time.time()

    def add(
        self, sums: list[float], masked: float, nsp: float, sequences: float, tokens: float, grad_norm: float
    ) -> None:
        # sums: the step's GLOBAL mlm loss, nsp loss (already normalised), mlm correct, nsp correct
        self.sums = [a + b for a, b in zip(self.sums, sums)]
        self.masked += masked
        self.nsp += nsp
        self.sequences += sequences
        self.tokens += tokens
        self.steps += 1
        self.grad_norm = grad_norm

    def flush(self, lr: float, counters: dict[str, int], accelerator: Any, cfg: PretrainConfig) -> dict:
        seconds = max(time.time() - self.start, 1e-9)
        steps = max(self.steps, 1)
        logs = {
            "train/loss": (self.sums[0] + self.sums[1]) / steps,
            "train/mlm_loss": self.sums[0] / steps,
            "train/mlm_accuracy": self.sums[2] / max(self.masked, 1.0),
            "train/lr": lr,
            "train/grad_norm": self.grad_norm,
            "train/tokens_per_s": self.tokens / seconds,
            "train/samples_per_s": self.sequences / seconds,
            "train/skipped_steps": counters["skipped_steps"],
            "train/tokens": counters["tokens"],
        }
        if cfg.data.nsp:
            logs["train/nsp_loss"] = self.sums[1] / steps
            logs["train/nsp_accuracy"] = self.sums[3] / max(self.nsp, 1.0)
        if accelerator.device.type == "cuda":
            logs["train/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            mfu = _mfu(cfg, self.tokens / seconds / accelerator.num_processes, accelerator.device)
            if mfu is not None:
                logs["train/mfu"] = mfu
        else:
            logs["train/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.reset()
        return logs


def _log(
    accelerator: Any,
    logs: dict[str, float],
    step: int,
    history: list[dict[str, float]],
    progress: Any,
    metrics_file: Path | None,
    echo: bool = True,
) -> None:
    """Send to the trackers (main process only, inside Accelerate), keep a history, print eval lines."""
    if not logs:
        return
    accelerator.log(logs, step=step)
    history.append({"step": step, **logs})
    if accelerator.is_main_process and metrics_file is not None:  # a plain-text copy of the dashboard
        with open(metrics_file, "a") as handle:
            handle.write(json.dumps({"step": step, **logs}) + "\n")
    if accelerator.is_main_process and (echo or progress.disable):
        text = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in logs.items() if isinstance(v, float))
        progress.write(f"step {step} {logs and next(iter(logs)).split('/')[0]}: {text}")


def _print(main: bool, message: str) -> None:
    if main:
        print(message, flush=True)


# ----------------------------------------------------------------------------------------- helpers: setup


def _mfu(cfg: PretrainConfig, tokens_per_s_per_device: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak (None when unknown)."""
    from bert.model.flops import mfu, training_flops_per_token

    flops = training_flops_per_token(cfg.model, cfg.data.max_seq_length, cfg.data.masked_lm_prob)
    dtype = cfg.train.mixed_precision if cfg.train.mixed_precision != "no" else "fp32"
    return mfu(tokens_per_s_per_device * flops, device, dtype)


def _tokenizer_vocab_size(tokenizer_dir: Path, data_meta: dict[str, Any]) -> int | None:
    for key in ("vocab_size", "tokenizer_vocab_size"):
        if isinstance(data_meta.get(key), int):
            return data_meta[key]
    vocab = tokenizer_dir / "vocab.txt"
    if vocab.is_file():
        return sum(1 for _ in vocab.open(encoding="utf-8"))
    return None


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
        "tokenizer": digest.hexdigest()[:16],
        "num_processes": num_processes,
    }


def _load_init(model: Any, folder: str) -> None:
    """`train.init_from`: weights only (not a resume), from an export or any Hugging Face BERT folder."""
    from bert.model import BertForPreTraining
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
    differ = [
        f"model.{k}: {source_cfg[k]!r} (init_from) vs {own_cfg[k]!r}"
        for k in shape_keys
        if source_cfg[k] != own_cfg[k]
    ]
    if differ:
        raise UserError(f"train.init_from={folder}: the model differs in {'; '.join(differ)}")
    source = BertForPreTraining.from_pretrained(folder)
    own = model.state_dict()
    state = {}
    for name, value in source.state_dict().items():
        if name in own and own[name].shape != value.shape:
            if name.endswith("position_embeddings.weight"):  # phase 2 may extend positions: copy the prefix
                value = torch.cat([value, own[name][value.shape[0] :]])[: own[name].shape[0]]
            else:
                raise UserError(f"train.init_from={folder}: {name} has shape {tuple(value.shape)}")
        state[name] = value
    model.load_state_dict(state, strict=False)


def _parse_debug_signal(spec: str | None) -> tuple[int, tuple[str, int] | None]:
    """'SIGTERM@5' -> (SIGTERM, ('step', 5)); 'SIGINT@eval:4' -> (SIGINT, ('eval', 4))."""
    if not spec:
        return signal.SIGTERM, None
    name, _, where = spec.partition("@")
    try:
        sig = getattr(signal, name.strip().upper())
        kind, _, number = where.rpartition(":")
        return sig, (kind or "step", int(number))
    except (AttributeError, ValueError):
        raise UserError(
            f"train.debug_signal={spec!r}: expected like 'SIGTERM@5' or 'SIGTERM@eval:4'"
        ) from None


def _record_ids(path: Path, step: int, micro_ids: list[torch.Tensor]) -> None:
    """Append this step's consumed (epoch, id) pairs: a testing and auditing aid."""
    pairs = [pair for ids in micro_ids for pair in ids.tolist()]
    with path.open("a") as handle:
        handle.write(json.dumps({"step": step, "examples": pairs}) + "\n")
