"""`nn.Linear` under bf16 autocast on the CPU, with its input gradient computed in a faster form.

Under bf16 autocast, autograd computes a linear layer's input gradient as `g @ w`: (rows, out) @ (out, in)
with the weight as stored. oneDNN runs that form at about half the speed of the same product written as a
forward, `F.linear(g, w.t().contiguous())`, on a transposed copy of the bf16 weight (the copy is (in, out)
values, small beside the product; scripts/matmul_ceiling.py times both forms, BENCHMARKS.md has the figures).

`Bf16Linear` computes exactly the products autocast would compute, in bf16: the forward is autocast's
(`F.linear` on the bf16 casts of input, weight and bias), the weight gradient is autograd's own form
(`g^T @ x`, then cast to the weight's dtype, as the backward of autocast's cast does), the bias gradient the
same sum; only the input gradient's kernel differs, so it agrees with the reference to bf16 rounding
(tests/test_model_fast.py). Outside bf16 autocast on the CPU it is `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bf16_autocast(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class _Bf16LinearFunction(torch.autograd.Function):
    """y = x W^T + b in bf16; the input gradient as F.linear(g, W^T) (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)  # (..., in), (out, in)
        ctx.save_for_backward(xb, wb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return F.linear(xb, wb, None if bias is None else bias.to(torch.bfloat16))  # (..., out) bf16

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        g = g.to(torch.bfloat16)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.linear(g, wb.t().contiguous()).to(x_dtype)  # (..., in): (..., out) @ (out, in)
        rows = g.reshape(-1, g.shape[-1])  # (R, out)
        if ctx.needs_input_grad[1]:
            grad_w = (rows.t() @ xb.reshape(-1, xb.shape[-1])).to(w_dtype)  # (out, in), autograd's form
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0).to(b_dtype)  # (out,)
        return grad_x, grad_w, grad_b


class Bf16Linear(nn.Linear):
    """`nn.Linear` whose input gradient under bf16 autocast on the CPU takes the faster form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bf16_autocast(x):
            return _Bf16LinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)
