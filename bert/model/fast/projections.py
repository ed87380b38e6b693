"""The attention's query, key and value projections as one matmul.

Three (N, H) x (H, H) products become one (N, H) x (H, 3H) product on the concatenated weights (the
parameters keep their Hugging Face names; the concatenation is a copy of 3 H^2 floats per layer and step).
Its gain is small (BENCHMARKS.md, "Figures moved out of the code").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bert.model.layers import BertSelfAttention
from bert.model.masks import Layout


class FusedQKVSelfAttention(BertSelfAttention):
    """`BertSelfAttention` computing q, k and v with one matmul."""

    def forward(self, hidden: torch.Tensor, layout: Layout) -> torch.Tensor:
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))  # (3H, H)
        bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))  # (3H,)
        qkv = F.linear(hidden, weight, bias).unflatten(
            -1, (3, self.num_heads, self.head_dim)
        )  # (..., 3, A, D)
        q, k, v = qkv.unbind(-3)  # each (..., A, D)
        return self.attend(q, k, v, layout).flatten(-2)  # (..., H)
