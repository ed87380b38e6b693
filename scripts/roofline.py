"""A per-part roofline estimate of one BERT pretraining step on a GPU (default: BERT-base, sequence 128,
bf16 autocast, one H100 SXM), for each way the step can run. An estimate, not a measurement: every part's
time is max(FLOPs / achievable FLOP/s, bytes / achievable bandwidth), summed over the parts.

    python scripts/roofline.py [--model base] [--seq-len 128] [--batch 256] [--real-fraction 0.9]
                               [--peak-tflops 989] [--bandwidth-tbs 3.35] [--matmul-eff 0.7] [--memory-eff 0.7]

Parts (per sequence of T tokens, forward + backward = 3 x forward for matmuls, 3 x the forward traffic for
the memory-bound operations: the backward reads what the forward saved and writes gradients):
- matmuls: the encoder's Q, K, V, output and feed-forward projections, the pooler and NSP head, and the MLM
  transform + decoder at the masked slots (P = 20 per 128, Google's setting) with the vocabulary padded to 30528;
- attention: QK^T and AV, 4 T H per token and layer forward (flash kernels: no T x T matrix in memory);
- memory-bound: per layer, what eager PyTorch under autocast reads and writes per token: two LayerNorms in
  fp32, the casts to bf16 in front of the matmuls, two hidden dropouts with their masks, two residual adds
  in fp32, GELU over the intermediate size; with torch.compile (inductor) these fuse into the matmuls'
  neighbours, which the estimate counts as one read and one write of the hidden state per fused group;
- AdamW: the fused optimizer, reading and writing weights, gradients and both moments once per step;
- embed/glue: embeddings, the MLM logits' softmax traffic; unpad: the gather and scatter of the unpadded path.

Padding: a padded step runs every padded token (`--real-fraction` of them are real, about 0.9 in Google's
data at 128); the unpadded path runs the real ones only and pays a gather and a scatter per step.
Useful MFU counts the FLOPs of real tokens only (bert.model.flops), over the peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def estimate(args: argparse.Namespace) -> list[dict]:
    from bert.config import PretrainConfig, load_config
    from bert.model.flops import training_flops_per_token

    cfg = load_config(PretrainConfig, None, [f"model={args.model}"]).model
    h, i, layers, t = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, args.seq_len
    vocab = -(-cfg.vocab_size // 64) * 64
    slots = round(t * 0.15 * 20 / 19.2)
    params = layers * (4 * h * h + 2 * h * i) + vocab * h + (cfg.max_position_embeddings + 2) * h + 2 * h * h
    matmul_rate = args.peak_tflops * 1e12 * args.matmul_eff
    bandwidth = args.bandwidth_tbs * 1e12 * args.memory_eff
    useful_per_token = training_flops_per_token(cfg, int(t * args.real_fraction), slots / t)

    rows = []
    for name, tokens_run, compiled, unpadded in (
        ("eager, padded SDPA", t, False, False),
        ("eager, unpadded (torch varlen flash)", t * args.real_fraction, False, True),
        ("compiled (inductor), padded SDPA", t, True, False),
        ("compiled, unpadded", t * args.real_fraction, True, True),
    ):
        seqs = args.batch
        tokens = seqs * tokens_run
        attn_len = t * args.real_fraction if unpadded else t
        parts = {}
        dense = 6 * layers * (4 * h * h + 2 * h * i) * tokens + 6 * (h * h + 2 * h) * seqs
        head = 6 * (h * h + h * vocab) * slots * seqs
        parts["matmuls"] = (dense + head) / matmul_rate
        parts["attention"] = 12 * h * attn_len * layers * tokens / (matmul_rate * 0.6)  # flash: ~60% of GEMM
        # bytes per token and layer, forward (module docstring); 3x for forward + backward
        # eager: 2 LayerNorms in fp32 (read + write 4 + 4 bytes), 2 casts to bf16 (4 + 2), 2 dropouts (2 + 2
        # and a 1-byte mask), 2 residual adds in fp32 (2 + 4 read, 4 written), the q/k/v head transposes
        # (3 x (2 + 2)), GELU over I (2 + 2)
        eager_bytes = (2 * 8 + 2 * 6 + 2 * 5 + 2 * 10 + 12) * h + 4 * i
        # compiled: about 5 fused groups reading and writing the hidden state once each in bf16, and GELU
        # in a matmul epilogue writing I once
        fused_bytes = 5 * 4 * h + 2 * i
        per_token = (fused_bytes if compiled else eager_bytes) * layers * 3
        parts["memory-bound"] = per_token * tokens / bandwidth
        parts["embed/glue"] = (3 * 4 * h * tokens + 3 * 4 * vocab * slots * seqs) / bandwidth
        if unpadded:
            parts["unpad"] = 2 * 2 * 4 * h * tokens / bandwidth
        parts["AdamW"] = params * 4 * 4 * 2 / bandwidth
        seconds = sum(parts.values())
        real_tokens = seqs * t * args.real_fraction
        useful = real_tokens * useful_per_token / seconds
        rows.append(
            {
                "path": name,
                "step_ms": seconds * 1e3,
                "parts_ms": {k: v * 1e3 for k, v in parts.items()},
                "real_tokens_per_s": real_tokens / seconds,
                "useful_mfu": useful / (args.peak_tflops * 1e12),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="base")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256, help="sequences per GPU per step")
    parser.add_argument("--real-fraction", type=float, default=0.9)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35, help="HBM bandwidth (H100 SXM: 3.35)")
    parser.add_argument("--matmul-eff", type=float, default=0.7, help="achievable share of the peak in GEMMs")
    parser.add_argument("--memory-eff", type=float, default=0.7, help="achievable share of the bandwidth")
    args = parser.parse_args()
    rows = estimate(args)
    print(
        f"roofline estimate: BERT-{args.model}, seq {args.seq_len}, batch {args.batch}, real tokens "
        f"{args.real_fraction:.0%}, peak {args.peak_tflops:.0f} TFLOP/s x {args.matmul_eff}, "
        f"{args.bandwidth_tbs} TB/s x {args.memory_eff}"
    )
    names = list(rows[0]["parts_ms"]) + ["unpad"]
    names = list(dict.fromkeys(names))
    print(f"{'path':<37} " + " ".join(f"{n:>12}" for n in names) + f" {'step ms':>8} {'tok/s':>8} {'MFU':>6}")
    for r in rows:
        cells = " ".join(f"{r['parts_ms'].get(n, 0.0):>12.2f}" for n in names)
        print(
            f"{r['path']:<37} {cells} {r['step_ms']:>8.1f} {r['real_tokens_per_s']:>8.0f} {r['useful_mfu']:>6.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
