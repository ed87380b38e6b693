"""Where a training step's time goes, phase by phase, at each precision: the profile behind BENCHMARKS.md.

    python scripts/step_breakdown.py --model base --batch-size 8 --dtype fp32,bf16 [--steps 6] [--profile]

Our step as `bert bench` times it (realistic batch, the fast paths `select` picks, fused AdamW, clipping to
norm 1), cut into its phases with a clock read between them: forward + loss, backward, gradient clipping,
optimizer step. The dtypes run interleaved, one step each in turn, so drift on the machine hits all alike;
each phase's median over the timed steps is printed beside the model FLOP/s of the whole step and of
forward + backward alone. `--profile` adds torch.profiler's table of the ops that take the most time (of the
last dtype). The memory-bound phases (clipping, AdamW) do no matmul work: their share bounds how close the
step can come to the matmul ceiling (scripts/matmul_ceiling.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = ("forward + loss", "backward", "clip", "optimizer")


def build(model_name: str, dtype: str, batch_size: int, seed: int = 0):
    """(model, optimizer, batch, step function) of our step at `dtype` (fp32 or bf16)."""
    from bert.batch import PretrainingBatch
    from bert.bench import realistic_batch
    from bert.config import PretrainConfig, load_config
    from bert.model import fast
    from bert.model.modeling import BertForPreTraining

    config = load_config(PretrainConfig, None, [f"model={model_name}"]).model
    config.attn_implementation = "unpadded"
    generator = torch.Generator().manual_seed(seed)
    batch = PretrainingBatch(**realistic_batch(batch_size, 128, config.vocab_size, generator))
    torch.manual_seed(seed)
    paths = fast.select("cpu")
    model = fast.enable(BertForPreTraining(config).train(), paths)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = paths.pretraining_loss()
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype]

    def step() -> list[float]:
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model(**batch.model_inputs()), batch).loss
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        return [b - a for a, b in zip(marks, marks[1:])]

    return config, batch, step, model, optimizer


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from bert.model.flops import training_flops_per_token

    torch.set_num_threads(os.cpu_count() or 1)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    runs = {d: build(args.model, d, args.batch_size) for d in dtypes}
    config, batch = runs[dtypes[0]][0], runs[dtypes[0]][1]
    real = batch.num_real_tokens()
    masked = int((batch.masked_lm_labels != -100).sum())
    flops = training_flops_per_token(config, real / args.batch_size, masked / real) * real
    for _ in range(args.warmup):
        for d in dtypes:
            runs[d][2]()
    times = {d: [] for d in dtypes}
    for _ in range(args.steps):
        for d in dtypes:
            times[d].append(runs[d][2]())
    params = sum(p.numel() for p in runs[dtypes[0]][3].parameters())
    print(f"model={args.model} batch={args.batch_size}x128 real tokens={real} masked={masked} "
          f"parameters={params / 1e6:.1f}M threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        f"{'dtype':<6} "
        + " ".join(f"{p:>15}" for p in PHASES)
        + f" {'step':>10} {'TFLOP/s':>8} {'fwd+bwd':>8}"
    )
    for d in dtypes:
        phase = [statistics.median(t[i] for t in times[d]) for i in range(len(PHASES))]
        whole = statistics.median(sum(t) for t in times[d])
        compute = phase[0] + phase[1]
        cells = " ".join(f"{p * 1000:>8.1f} ms {p / whole:>3.0%}" for p in phase)
        print(
            f"{d:<6} {cells} {whole * 1000:>7.1f} ms {flops / whole / 1e12:>8.3f} {flops / compute / 1e12:>8.3f}"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = runs[dtypes[-1]][2]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
