"""The vocabulary projection of the MLM head, computed in slices of the vocabulary on the CPU.

The decoder maps the P hidden states at the masked positions to V = 30,522 logits with the (V, H)
word-embedding matrix. P is small (about 19 per sequence), V is large: a skinny matmul for which the CPU BLAS
picks a poor plan. Measured on a 2-core CPU for BERT-mini at batch 8 (P = 152, H = 256): `F.linear` takes
about 48 ms forward and 64 ms for the two backward matmuls; the same products over slices of 2048 rows of the
matrix take about 25 ms and 40 ms. Each logit is the same dot product either way.

`VocabularyProjection` is an `nn.Linear` (so the Hugging Face names `decoder.weight` / `decoder.bias` and
the weight tying are unchanged) whose forward runs the sliced autograd function on the CPU in fp32 without
autocast, and `F.linear` everywhere else (CUDA, low precision), where the library kernels are already good.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLICE_ROWS = 2048  # rows of the (V, H) matrix per matmul


class _SlicedLinear(torch.autograd.Function):
    """x (P, H), weight (V, H), bias (V,) -> x @ weight.T + bias (P, V), slice by slice of the V rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = weight.shape[0]
        out = x.new_empty(x.shape[0], rows)  # (P, V)
        for start in range(0, rows, SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            product = x @ weight[part].t() if bias is None else torch.addmm(bias[part], x, weight[part].t())
            out[:, part] = product  # (P, slice)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # (P, H), (V, H)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_zeros(x.shape)  # (P, H)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty_like(weight)  # (V, H)
        for start in range(0, weight.shape[0], SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            grad_part = grad[:, part]  # (P, slice)
            if grad_x is not None:
                grad_x.addmm_(grad_part, weight[part])
            if grad_weight is not None:
                torch.mm(grad_part.t(), x, out=grad_weight[part])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)  # (V,)
        return grad_x, grad_weight, grad_bias


class VocabularyProjection(nn.Linear):
    """`nn.Linear(H, V)` whose CPU fp32 forward and backward run over slices of the vocabulary."""

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(..., H) -> (..., V); `weight` (V, H) replaces `self.weight` (the tied alias, see heads.py)."""
        weight = self.weight if weight is None else weight
        sliced = (
            hidden.device.type == "cpu"
            and hidden.dtype == torch.float32
            and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )
        if not sliced:
            return F.linear(hidden, weight, self.bias)
        flat = hidden.reshape(-1, hidden.shape[-1])  # (P, H)
        return _SlicedLinear.apply(flat, weight, self.bias).view(*hidden.shape[:-1], -1)
