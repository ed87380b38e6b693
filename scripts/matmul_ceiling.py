"""The CPU's matmul ceiling at the shapes a BERT training step multiplies, in fp32 and bf16.

    python scripts/matmul_ceiling.py [--model base] [--rows 1024] [--repeats 30] [--json out.json]

A training step's FLOPs are almost all `F.linear` calls of three kinds per weight (in, out): the forward
(rows x in) @ (in x out), the input gradient (rows x out) @ (out x in) and the weight gradient
(in x rows) @ (rows x out), for the attention projections (H, H) and (H, 3H) fused, the feed-forward (H, 4H)
and (4H, H), and the MLM transform (H, H). `rows` is the batch's token count (batch 8 x 128 = 1024). Each
shape is timed alone (median of `--repeats` after warm-up) with torch's default CPU kernels (MKL for fp32,
oneDNN for bf16), and as fp32 through oneDNN (`torch.utils.mkldnn`, which only runs inference; say so) for
comparison. The step-weighted ceiling is total FLOPs over total time of one pass over all shapes, once per
kind, each product in its fastest form (autograd's own, e.g. `g @ w` for the input gradient, or the same
product written as a forward `F.linear` on a transposed copy, copy included): what a perfect step (nothing
but these matmuls, each at its best measured speed) would reach. `bert bench` figures are compared against it
(BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"mini": 256, "small": 512, "medium": 512, "base": 768, "large": 1024}


def weight_shapes(hidden: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each kind of linear layer of one encoder layer, plus the MLM transform."""
    return {"qkv": (hidden, 3 * hidden), "attention out": (hidden, hidden), "ffn up": (hidden, 4 * hidden),
            "ffn down": (4 * hidden, hidden)}  # fmt: skip


def seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(rows: int, fan_in: int, fan_out: int, dtype: torch.dtype, repeats: int) -> dict[str, dict]:
    """Seconds of the forward, input-gradient and weight-gradient products of one (in, out) weight, each in
    the form autograd computes it and in the other forms of the same product (copies they need included):
    {product: {form: seconds}}. The ceiling takes each product's fastest form."""
    x = torch.randn(rows, fan_in, dtype=dtype)
    w = torch.randn(fan_out, fan_in, dtype=dtype)
    g = torch.randn(rows, fan_out, dtype=dtype)
    return {
        "forward": {"F.linear(x, w)": seconds(lambda: F.linear(x, w), repeats)},  # (rows, in) @ (in, out)
        "input grad": {  # (rows, out) @ (out, in)
            "g @ w": seconds(lambda: g @ w, repeats),  # autograd's form
            "F.linear(g, w.t().contiguous())": seconds(lambda: F.linear(g, w.t().contiguous()), repeats),
        },
        "weight grad": {  # (out, rows) @ (rows, in)
            "g.t() @ x": seconds(lambda: g.t() @ x, repeats),  # autograd's form
            "F.linear(g.t().contiguous(), x.t().contiguous())": seconds(
                lambda: F.linear(g.t().contiguous(), x.t().contiguous()), repeats
            ),
        },
    }


def mkldnn_forward(rows: int, fan_in: int, fan_out: int, repeats: int) -> float | None:
    """fp32 forward through oneDNN's own linear (inference only); None where torch has no mkldnn."""
    if not torch.backends.mkldnn.is_available():
        return None
    from torch.utils import mkldnn as mkldnn_utils

    layer = mkldnn_utils.to_mkldnn(torch.nn.Linear(fan_in, fan_out)).eval()
    x = torch.randn(rows, fan_in).to_mkldnn()
    with torch.no_grad():
        return seconds(lambda: layer(x), repeats)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="base", choices=sorted(MODELS))
    parser.add_argument("--rows", type=int, default=1024, help="tokens of a batch (default 8 x 128)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, rows = MODELS[args.model], args.rows
    print(
        f"{args.model} (H={hidden}), {rows} rows, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'weight':<14} {'product':<12} {'fp32 TFLOP/s':>12} {'bf16 TFLOP/s':>12} {'bf16/fp32':>9}    form "
          "(* the fastest, fp32 and bf16)")  # fmt: skip
    results: dict[str, dict] = {"model": args.model, "rows": rows, "shapes": {}}
    total = {"fp32": 0.0, "bf16": 0.0}
    flops_all = 0.0
    for name, (fan_in, fan_out) in weight_shapes(hidden).items():
        flops = 2.0 * rows * fan_in * fan_out
        fp32 = measure(rows, fan_in, fan_out, torch.float32, args.repeats)
        bf16 = measure(rows, fan_in, fan_out, torch.bfloat16, args.repeats)
        onednn = mkldnn_forward(rows, fan_in, fan_out, args.repeats)
        results["shapes"][name] = {
            "in": fan_in,
            "out": fan_out,
            "fp32": fp32,
            "bf16": bf16,
            "onednn_fp32_forward": onednn,
        }
        for product in fp32:
            best32, best16 = min(fp32[product].values()), min(bf16[product].values())
            total["fp32"] += best32
            total["bf16"] += best16
            flops_all += flops
            for form in fp32[product]:
                a32, a16 = fp32[product][form], bf16[product][form]
                mark = "".join(("*" if a32 == best32 else " ", "*" if a16 == best16 else " "))
                print(f"{name:<14} {product:<12} {flops / a32 / 1e12:>12.3f} {flops / a16 / 1e12:>12.3f} "
                      f"{a32 / a16:>8.2f}x {mark} {form}")  # fmt: skip
        if onednn is not None:
            print(f"{name:<14} {'forward':<12} {flops / onednn / 1e12:>12.3f} {'':>12} (fp32 through oneDNN)")
    ceiling = {dtype: flops_all / t / 1e12 for dtype, t in total.items()}
    results["ceiling_tflops"] = ceiling
    print(f"step-weighted ceiling: fp32 {ceiling['fp32']:.3f} TFLOP/s, bf16 {ceiling['bf16']:.3f} TFLOP/s "
          f"({ceiling['bf16'] / ceiling['fp32']:.2f}x)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
