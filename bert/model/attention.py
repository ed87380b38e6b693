"""Scaled dot-product attention: one entry point (`ScaledDotProductAttention`) and the kernels behind it.

Every layer hands its queries, keys and values, shaped like its hidden states with the heads split off,
(B, T, A, D) padded or (N, A, D) unpadded, together with the batch's layout (masks.py, where the mask rules
live), to the entry point. It dispatches on the layout:

- `PaddedLayout`, path 'eager' or attention probabilities asked for: `eager_attention`, explicit scores and
  softmax, the masked scores filled with the minimum of their own dtype.
- `PaddedLayout`, path 'sdpa': `torch.nn.functional.scaled_dot_product_attention` with the boolean
  key-padding mask (True = attend), passed as such, never turned into an additive float mask by us.
- `UnpaddedLayout`: `varlen_attention` on the real tokens only, with the kernel `varlen_backend` names:
  torch's own FlashAttention-2 with `cu_seqlens` (`aten._flash_attention_forward`, attention dropout
  included, no extra wheel) on CUDA in fp16/bf16; flash-attn's `flash_attn_varlen_func` where torch's is
  unavailable and the wheel is installed; elsewhere the reference fallback, which re-pads the tokens to
  (B, T) and runs SDPA with the key-padding mask (bert/model/fast has a faster CPU kernel).

No kernel reads anything back from the device, so the padded paths can be captured whole by torch.compile or
CUDA graphs; the varlen kernels take `max_seqlen` on the host, from the layout (masks.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.masks import Layout, UnpaddedLayout

try:  # optional CUDA kernel for the unpadded path
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the installation
    flash_attn_varlen_func = None


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, A, Tq, D), k and v (B, A, T, D), key_mask (B, 1, 1, T) bool -> context (B, A, Tq, D) and
    probabilities (B, A, Tq, T). `dropout_p` is applied to the probabilities (0 in eval)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, A, Tq, T)
    if key_mask is not None:
        # The minimum of the scores' own dtype, not -inf: a row that is all masked stays finite.
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return torch.matmul(probs, v), probs


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """q (B, A, Tq, D), k and v (B, A, T, D), key_mask (B, 1, 1, T) bool or None -> (B, A, Tq, D).

    Every row of the mask has a True key (masks.key_padding_mask), so no softmax is over an empty set."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


def varlen_backend(x: torch.Tensor) -> str:
    """The kernel the unpadded path runs on `x` (N, A, D): 'torch_flash', 'flash_attn' or 'padded_sdpa'.

    torch's flash kernel needs CUDA with compute capability 8.0 or newer, fp16/bf16 and a head size that is
    a multiple of 8 up to 256. The meta device stands in for CUDA (the GPU-faithful tests run it there)."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    head_ok = x.shape[-1] % 8 == 0 and x.shape[-1] <= 256
    if x.is_meta and half and head_ok:
        return "torch_flash"
    if not (x.is_cuda and half and head_ok):
        return "padded_sdpa"
    if _torch_flash_available(x.device):
        return "torch_flash"
    return "flash_attn" if flash_attn_varlen_func is not None else "padded_sdpa"


def _torch_flash_available(device: torch.device) -> bool:
    available = getattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)()
    return available and torch.cuda.get_device_capability(device) >= (8, 0)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: UnpaddedLayout, dropout_p: float
) -> torch.Tensor:
    """q, k, v (N, A, D) of real tokens only -> context (N, A, D); sequences delimited by layout.cu_seqlens."""
    backend = varlen_backend(q)
    cu, s = layout.cu_seqlens, layout.max_seqlen
    if backend == "torch_flash":
        # (output, logsumexp, rng state, ...): autograd replays the dropout from the rng state in backward
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, s, s, dropout_p, False, False)[0]
    if backend == "flash_attn":
        return flash_attn_varlen_func(q, k, v, cu, cu, s, s, dropout_p=dropout_p)
    # Reference fallback: back to (B, T), attend with the key-padding mask, and keep the real rows.
    qp, kp, vp = (layout.to_padded(x).transpose(1, 2) for x in (q, k, v))  # each (B, A, T, D)
    context = sdpa_attention(qp, kp, vp, layout.key_mask, dropout_p)  # (B, A, T, D)
    return layout.select(context.transpose(1, 2))  # (N, A, D)


class ScaledDotProductAttention(nn.Module):
    """The attention entry point of every layer: `forward(q, k, v, layout)` with the path of the config.

    No parameters (state dicts are unchanged); attention dropout is applied inside the kernel, in train mode.
    """

    def __init__(self, implementation: str, dropout_p: float) -> None:
        super().__init__()
        self.implementation = implementation
        self.dropout_p = dropout_p

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
        """q, k, v (B, T, A, D) padded or (N, A, D) unpadded -> context of the same shape.

        Padded q may cover fewer positions than k and v, (B, Tq, A, D): those queries attend to every key.
        """
        p = self.dropout_p if self.training else 0.0
        if isinstance(layout, UnpaddedLayout):
            return varlen_attention(q, k, v, layout, p)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # each (B, A, T, D)
        if self.implementation == "eager" or layout.attentions is not None:
            context, probs = eager_attention(q, k, v, layout.key_mask, p)
            if layout.attentions is not None:
                layout.attentions.append(probs)
        else:
            context = sdpa_attention(q, k, v, layout.key_mask, p)
        return context.transpose(1, 2)  # (B, Tq, A, D)

    def extra_repr(self) -> str:
        return f"{self.implementation}, dropout_p={self.dropout_p}"
