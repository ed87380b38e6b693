"""Dropout with a cheaper random mask, for the CPU.

`nn.Dropout` on the CPU draws one Bernoulli sample per element through torch's generator, which can take
longer than the matmul that produced the activation (BENCHMARKS.md, "Figures moved out of the code").
`cheap_dropout` draws 16 random bits per element instead, four elements from one
64-bit draw of the same seeded generator (so runs stay reproducible and an exact resume restores it), and
drops an element when its bits fall below a threshold. That is a Bernoulli draw whose probability is p rounded
to a multiple of 1/65536 (for p = 0.1: 6554/65536 = 0.100006); the kept values are scaled by 1 / (1 - that
probability), so the expectation of the output is exactly the input, as with `nn.Dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit random numbers


def cheap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of `x` with the 16-bit-threshold mask (module docstring); identity in eval or for p = 0."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return F.dropout(x, p, True)
    dropped_levels = round(p * _LEVELS)  # how many of the 65536 values mean "drop"
    scale = _LEVELS / (_LEVELS - dropped_levels)  # 1 / keep probability
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device)
    # The full signed range: random_() without bounds leaves the top bit of an int64 at zero.
    words.random_(-(1 << 63), (1 << 63) - 1)
    bits = words.view(torch.int16)[:count].view(x.shape)  # uniform over [-32768, 32767]
    dropped = bits < dropped_levels - _LEVELS // 2
    del words, bits
    # One float temporary: masked_fill's backward needs only the mask, so the scaling can be in place.
    return x.masked_fill(dropped, 0.0).mul_(scale)


class CheapDropout(nn.Dropout):
    """`nn.Dropout` with the cheap mask; the same module otherwise (no parameters, same repr)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, self.inplace)
        return cheap_dropout(x, self.p, self.training)
