"""`bert pretrain`: the MLM + NSP pretraining loop, on one CPU, one GPU, or many GPUs and nodes.

`pretrain(cfg)` sets a run up (`Run.start`), runs `train`, the loop, which reads top to bottom over named
results (`train_step` -> `StepResult`, `evaluate` -> metrics), and tears the run down in one place
(`Run.close`). The same code runs under `accelerate launch` and `torchrun`.

Loss normalisation (bert/losses.py). The MLM loss of an optimizer step is the sum of token losses over ALL
masked tokens of the global batch (every micro-batch of the step, on every process) divided by their count;
the NSP loss the same over sequences. The step's micro-batches are fetched first and their counts
all-reduced; each micro-batch then backpropagates its share of the global losses, so one step of batch B
equals k accumulated steps of B / k, and N processes equal one.

Fault tolerance (bert/checkpoint.py). A checkpoint every `save_every` steps; the run resumes from the newest
checkpoint that verifies when the same command is re-run: weights, optimizer, grad scaler, every process's
RNG, the data position (bert.sampler.ShardedBatchSampler starts there, no replay), the dashboard run, and
metrics.jsonl cut back to what that checkpoint had seen. SIGTERM/SIGINT set a flag, all-reduced once per step
(and per evaluation batch), so every process finishes the step, saves the same checkpoint and exits 0. A
non-finite loss or gradient norm on any process skips the optimizer step everywhere; no checkpoint is saved
while such steps continue, and too many in a row stop the run. One run per output folder (a lock).

On resume, optimizer hyper-parameters, the schedule and train.max_steps follow the config given now (the lr
of each step is a function of it, bert.optim.Schedule); changed values are named in one line. What the saved
weights or data position depend on (model shape, tokenizer, batch size, processes) must not change.
"""

from __future__ import annotations

from typing import Any

import torch

from bert.config import PretrainConfig
from bert.errors import UserError
from bert.hooks import TrainHooks
from bert.pretrain.run import Run
from bert.pretrain.step import Window, evaluate, train_step
from bert.training import release_freed_memory


def pretrain(cfg: PretrainConfig, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` for `cfg.train.max_steps` steps; returns the final figures."""
    run = Run.start(cfg)
    try:
        return train(run, hooks or TrainHooks())
    finally:
        run.close()


def train(run: Run, hooks: TrainHooks) -> dict[str, Any]:
    """The loop: fetch a step's batches, step, agree, log, evaluate, save; then the final evaluation and
    export. Nothing is read back from the device between agreement points (bert/pretrain/step.py)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    k, budget, pace = cfg.train.gradient_accumulation_steps, run.parts.budget, run.parts.pace
    elapsed = run.clock(hooks)
    window = Window(run.parts)
    release_every = cfg.train.release_memory_every if accelerator.device.type == "cpu" else None
    if cfg.train.eval_at_start and state.step == 0:
        run.log("eval", evaluate(run.parts, run.eval_loader, state.step, hooks).metrics)
    elif state.step and cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
        if not run.evaluated_at(state.step):  # a stop signal came during this step's evaluation: redo it
            # with the RNG streams left as the checkpoint restored them (the evaluation's loader draws a
            # seed), so that the resumed steps stay bit-identical to an uninterrupted run
            devices = [accelerator.device] if accelerator.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                run.log("eval", evaluate(run.parts, run.eval_loader, state.step, hooks).metrics)
    while not budget.spent(state.step, *pace.estimate(state.step)):
        batches = [next(run.batches) for _ in range(k)]
        hooks.on_batches(state.step + 1, batches, accelerator.process_index)
        result = train_step(run.parts, state.step, batches, hooks, elapsed)
        state.advance(run.sampler, k)
        window.add(result)
        if release_every and state.step % release_every == 0:
            release_freed_memory()
        shown = {"budget": f"{result.progress:.0%}"} if budget.by_fraction else {}
        run.progress.update(1, loss=window.last_loss, tok_s=window.tokens_per_s(), **shown)

        stop = pace.exact and run.stop.requested  # one process: a host flag, nothing to agree on
        if stop or agreement_due(cfg, state.step, budget, pace):
            agreed = window.agree(elapsed, run.stop.requested)
            stop = agreed.stop
            for skipped in state.absorb(agreed):
                run.print(f"step {skipped}: non-finite loss or gradient norm on some process, step skipped")
            pace.agree(state.step, agreed.seconds, state.counters["tokens"])
            if state.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                latest = run.checkpointer.latest()
                raise UserError(
                    f"stopping at step {state.step}: {state.nonfinite_streak} consecutive steps had a "
                    f"non-finite loss or gradient norm (train.max_nonfinite_steps="
                    f"{cfg.train.max_nonfinite_steps}); latest healthy checkpoint: {latest or 'none'}; "
                    "try a lower optimizer.lr or more warmup",
                    exit_code=1,
                )
            progress = budget.progress(state.step, pace.seconds, pace.tokens)
            if state.step % cfg.train.log_every == 0 or progress >= 1.0:
                run.log("train", window.flush(state.counters, result.lr, progress))

        if not stop and cfg.train.eval_every and state.step % cfg.train.eval_every == 0:
            evaluation = evaluate(run.parts, run.eval_loader, state.step, hooks)
            stop = evaluation.interrupted
            if evaluation.complete:
                run.log("eval", evaluation.metrics)
        if stop:
            saved = run.save()
            where = f"saved step {state.step} to {saved}" if saved else "nothing saved"
            run.print(f"stop signal: {where}; exiting 0")
            return run.result(stopped=True)
        if cfg.train.save_every and state.step % cfg.train.save_every == 0:
            run.save()

    run.progress.close()
    if not run.evaluated_at(state.step):
        run.log("eval", evaluate(run.parts, run.eval_loader, state.step, hooks).metrics)
    if not run.checkpointer.has(state.step):
        run.save()
    run.export()
    return run.result(stopped=False)


def agreement_due(cfg: PretrainConfig, step: int, budget: Any, pace: Any) -> bool:
    """Whether the processes agree (one collective, one device read) after `step`: at every logging,
    evaluation and checkpoint step, and when the budget is, or is estimated to be, spent."""
    train = cfg.train
    return (
        step % train.log_every == 0
        or bool(train.eval_every and step % train.eval_every == 0)
        or bool(train.save_every and step % train.save_every == 0)
        or budget.spent(step, *pace.estimate(step))
    )
