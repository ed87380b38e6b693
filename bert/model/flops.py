"""Training FLOPs per token of BertForPreTraining, and model-FLOPs utilisation against a peak table.

Per token, one training step (forward + backward = 3 x forward, 2 FLOPs per multiply-add) costs

    6 * N                                   N = L * (4 H^2 + 2 H I): the encoder's matmul weights, less
  - 6 * (2 H^2 + 2 H I) * (1 - r)           the last layer's query and output projections and feed-forward,
                                            needed only at the r = masked_fraction + 1 / T tokens the heads
                                            read (the masked positions and [CLS], see BertEncoder)
  + 12 * H * T * (L - 1 + r)                attention scores QK^T and mixing AV: 2 * 2 * T * H per query and
                                            layer forward, times 3 for forward + backward; in the last layer
                                            only for the r queries read
  + 6 * (H^2 + H V) * masked_fraction       MLM transform + tied decoder, run only at masked positions
  + 6 * (H^2 + 2 H) / T                     pooler + NSP, once per sequence of T tokens

These are the FLOPs a step needs (the usual 6N rule, less the work no output depends on), so an MFU from them
is the share of the peak spent on useful matmuls. Our unpadded CPU path does exactly this work; the GPU paths
still compute the last layer's query projection and attention at every token, which this count does not
credit. Embedding lookups, biases, LayerNorm, softmax and GELU are not matmuls and are left out (as in the 6N
rule). T is the length each token attends over: the padded length for a padded batch, the real length with
unpadding.

`executed_flops_per_sequence` counts what a path really runs on a (B, T) batch: every padded token through
every layer, attention over T, and the MLM head at P slots per row (P = T for transformers, whose head runs
at every token). Useful / executed is the share of the arithmetic that is not padding or discarded work; an
MFU quoted from the executed count (`mfu_executed`) says how busy the GPU was, the useful one how much of
that was needed.
"""

from __future__ import annotations

from typing import Any

from bert.model.config import BertConfig

PEAK_FLOPS = {
    # device name substring: (bf16/fp16 dense, tf32 dense) FLOP/s, from NVIDIA's data sheets (without
    # sparsity). Checked in this order: the PCIe and NVL H100s are slower than the SXM one.
    "H200": (989e12, 494e12),
    "H100 PCIe": (756e12, 378e12),
    "H100 NVL": (835e12, 418e12),
    "H100": (989e12, 494e12),  # SXM (e.g. 'NVIDIA H100 80GB HBM3')
    "A100": (312e12, 156e12),
    "A10G": (125e12, 62.5e12),
    "L4": (121e12, 60e12),
    "V100": (125e12, 15.7e12),
}


def encoder_matmul_params(config: BertConfig) -> int:
    """N: weights of the encoder's matmuls (Q, K, V, attention output, the two feed-forward layers)."""
    h, i = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 2 * h * i)


def training_flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """FLOPs of forward + backward per token of a BertForPreTraining step (formula in the module docstring)."""
    h, i, v, layers = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.num_hidden_layers,
    )
    read = min(1.0, masked_fraction + 1 / seq_len)  # tokens the heads read, through the last layer
    skipped = (2 * h * h + 2 * h * i) * (1 - read) if layers else 0.0
    dense = 6 * (encoder_matmul_params(config) - skipped)
    attention = 12 * h * seq_len * (layers - 1 + read) if layers else 0.0
    mlm_head = 6 * (h * h + h * v) * masked_fraction
    pooler_nsp = 6 * (h * h + 2 * h) / seq_len
    return float(dense + attention + mlm_head + pooler_nsp)


def executed_flops_per_sequence(config: BertConfig, seq_len: int, head_slots: int) -> float:
    """FLOPs of forward + backward that a padded path runs for ONE sequence of `seq_len` (padded) tokens with
    the MLM head at `head_slots` positions: no work skipped (module docstring)."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    dense = 6 * encoder_matmul_params(config) * seq_len
    attention = 12 * h * seq_len * seq_len * layers
    mlm_head = 6 * (h * h + h * v) * head_slots
    pooler_nsp = 6 * (h * h + 2 * h)
    return float(dense + attention + mlm_head + pooler_nsp)


def peak_flops(device: Any, dtype: str = "bf16") -> float | None:
    """The dense peak FLOP/s of a known CUDA GPU for `dtype` (bf16/fp16 tensor cores, else TF32), or None."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32) in PEAK_FLOPS.items():
        if key in name:
            return half if dtype in ("bf16", "fp16") else tf32
    return None


def mfu(flops_per_second: float, device: Any, dtype: str = "bf16") -> float | None:
    """Achieved / peak dense FLOP/s of a known CUDA GPU, or None (CPU, unknown device).

    `dtype` 'bf16' or 'fp16' use the tensor-core half-precision peak, anything else the TF32 peak.
    """
    peak = peak_flops(device, dtype)
    return None if peak is None else flops_per_second / peak
