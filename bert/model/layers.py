"""Encoder layer (attention + feed-forward), the encoder stack and the pooler (Hugging Face names).

Every module here is shape-agnostic in its leading dimensions, so the same code runs on padded (B, T, H) and
unpadded (N, H) hidden states; only the attention kernel needs the layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.attention import BertAttention
from bert.model.config import BertConfig
from bert.model.dropout import Dropout
from bert.model.masking import Layout


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'gelu' is BERT's exact erf GELU; 'gelu_new' (alias 'gelu_pytorch_tanh') the tanh approximation."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"hidden_act {name!r}: expected gelu, gelu_new or relu")


class BertIntermediate(nn.Module):
    """First half of the feed-forward block: H -> intermediate_size, then GELU."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))  # (..., I)


class BertOutput(nn.Module):
    """Second half of the feed-forward block: intermediate_size -> H, dropout, residual (+ LayerNorm)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.dense(intermediate)) + residual  # (..., H)
        return out if self.pre_layer_norm else self.LayerNorm(out)


class BertLayer(nn.Module):
    """One transformer layer: self-attention then feed-forward, each with residual and LayerNorm.

    Post-LN (BERT): x = LN(x + f(x)). Pre-LN (config.pre_layer_norm): x = x + f(LN(x)), with the same
    LayerNorm modules applied to the sub-layer input instead.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(
        self,
        hidden: torch.Tensor,
        layout: Layout,
        output_attentions: bool = False,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H) or (N, H) -> the same shape, or (M, H) at `rows` (see BertEncoder)."""
        hidden, probs = self.attention(hidden, layout, output_attentions, rows)
        normed = self.output.LayerNorm(hidden) if self.pre_layer_norm else hidden
        return self.output(self.intermediate(normed), hidden), probs


class BertEncoder(nn.Module):
    """A stack of `num_hidden_layers` layers; pre-LN adds a final LayerNorm (no Hugging Face counterpart).

    `output_rows` (M,): the rows of the flattened (B * T or N, H) hidden states that the caller will read,
    e.g. [CLS] and the masked positions for the pretraining heads (about 16% of the tokens), or [CLS] alone
    for classification. The last layer still computes keys and values at every token, since every kept query
    attends to all of its sequence, but its attention output projection, feed-forward block and LayerNorms
    only at those rows (and on the unpadded CPU path its query projection and attention too), and the encoder
    returns (M, H). Each kept row is computed exactly as without `output_rows`. For BERT-mini (4 layers,
    batches 16% of whose tokens are read) that is about 18% of the encoder's matmul work.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        if config.pre_layer_norm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(
        self,
        hidden: torch.Tensor,
        layout: Layout,
        output_attentions: bool = False,
        output_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """hidden (B, T, H) or (N, H) -> the same shape, or (M, H) at `output_rows` (M,)."""
        attentions = []
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            hidden, probs = layer(hidden, layout, output_attentions, output_rows if i == last else None)
            attentions.append(probs)
        if output_rows is not None and not self.layer:  # no layer to do it
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, output_rows)
        if self.pre_layer_norm:
            hidden = self.LayerNorm(hidden)
        return hidden, (tuple(attentions) if output_attentions else None)


class BertPooler(nn.Module):
    """dense + tanh on the [CLS] hidden state: the sentence representation for NSP and classification."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))  # (B, H)
