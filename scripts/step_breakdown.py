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


def phases(side, batch) -> list[float]:
    """Seconds of each phase (PHASES) of one step of a `bert bench` side, as `bert.bench.timed_step` runs
    it, with the clock read between the phases."""
    marks = [time.perf_counter()]
    loss = side.loss_of(batch)  # forward and loss under the side's autocast
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(side.model.parameters(), 1.0)
    marks.append(time.perf_counter())
    side.optimizer.step()
    side.optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])]


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
    from bert.batch import PretrainingBatch
    from bert.bench import bench_dtypes, build_sides, realistic_batch
    from bert.config import PretrainConfig, load_config
    from bert.model import fast
    from bert.model.flops import training_flops_per_token

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cpu")
    config = load_config(PretrainConfig, None, [f"model={args.model}"]).model
    config.attn_implementation = "unpadded"
    generator = torch.Generator().manual_seed(0)
    batch = PretrainingBatch(**realistic_batch(args.batch_size, 128, config.vocab_size, generator))
    # bert bench's own construction of our side: the same initial weights, fast paths and fused AdamW
    bench_args = argparse.Namespace(seed=0, dtype=args.dtype)
    dtypes = bench_dtypes(bench_args)
    sides = build_sides(bench_args, ["ours"], dtypes, config, device, fast.select(device))
    real = batch.num_real_tokens()
    masked = int((batch.masked_lm_labels != -100).sum())
    flops = training_flops_per_token(config, real / args.batch_size, masked / real) * real
    for _ in range(args.warmup):
        for side in sides:
            phases(side, batch)
    times = {side.dtype: [] for side in sides}
    for _ in range(args.steps):
        for side in sides:
            times[side.dtype].append(phases(side, batch))
    params = sum(p.numel() for p in sides[0].model.parameters())
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

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                phases(sides[-1], batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
