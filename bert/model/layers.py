"""The transformer layer and its parts, the encoder stack and the pooler (Hugging Face names).

Every module here is shape-agnostic in its leading dimensions: the same code runs on padded (B, T, H) and on
unpadded (N, H) hidden states. Only the attention kernel looks at the batch's layout (masks.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.attention import ScaledDotProductAttention
from bert.model.config import BertConfig
from bert.model.masks import Layout


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """'gelu' is BERT's exact erf GELU; 'gelu_new' (alias 'gelu_pytorch_tanh') the tanh approximation."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"hidden_act {name!r}: expected gelu, gelu_new or relu")


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: query, key and value projections, then the attention kernel."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attend = ScaledDotProductAttention(
            config.attn_implementation, config.attention_probs_dropout_prob
        )

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., A, D)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(
        self, hidden: torch.Tensor, layout: Layout, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden (B, T, H) padded or (N, H) unpadded -> context of the same shape.

        `queries` (the fast paths' last layer, bert/model/fast/encoder.py): attend from these tokens only,
        (B, K, H) or (M, H), to the keys and values of every token of `hidden`; `layout` then says where
        the queries sit among the keys."""
        q = self.heads(self.query(hidden if queries is None else queries))  # (..., A, D)
        k = self.heads(self.key(hidden))
        v = self.heads(self.value(hidden))
        return self.attend(q, k, v, layout).flatten(-2)  # (..., H)


class BertSelfOutput(nn.Module):
    """Output projection of attention, dropout, and the residual (+ LayerNorm, post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.dense(context)) + residual  # (..., H)
        return out if self.pre_layer_norm else self.LayerNorm(out)


class BertAttention(nn.Module):
    """The attention sub-layer; with pre_layer_norm, its LayerNorm runs on the input instead of the output."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(
        self, hidden: torch.Tensor, layout: Layout, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden (..., H) -> the same shape; with `queries`, the sub-layer at those tokens only (their
        shape), keys and values still at every token (`BertSelfAttention.forward`)."""
        norm = self.output.LayerNorm if self.pre_layer_norm else (lambda x: x)
        if queries is None:
            return self.output(self.self(norm(hidden), layout), hidden)  # (..., H)
        return self.output(self.self(norm(hidden), layout, norm(queries)), queries)


class BertIntermediate(nn.Module):
    """First half of the feed-forward block: H -> intermediate_size, then the activation."""

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
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.dense(intermediate)) + residual  # (..., H)
        return out if self.pre_layer_norm else self.LayerNorm(out)


class BertLayer(nn.Module):
    """One transformer layer: self-attention, then feed-forward, each with a residual and a LayerNorm.

    Post-LN (BERT): x = LN(x + f(x)). Pre-LN (config.pre_layer_norm): x = x + f(LN(x)), with the same
    LayerNorm modules applied to the sub-layer input instead.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.pre_layer_norm = config.pre_layer_norm

    def feed_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The feed-forward sub-layer with its residual: (..., H) -> (..., H)."""
        normed = self.output.LayerNorm(hidden) if self.pre_layer_norm else hidden
        return self.output(self.intermediate(normed), hidden)

    def forward(self, hidden: torch.Tensor, layout: Layout) -> torch.Tensor:
        """hidden (B, T, H) or (N, H) -> the same shape."""
        return self.feed_forward(self.attention(hidden, layout))


class BertEncoder(nn.Module):
    """A stack of `num_hidden_layers` layers; pre-LN adds a final LayerNorm (no Hugging Face counterpart)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        if config.pre_layer_norm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(
        self, hidden: torch.Tensor, layout: Layout, output_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden (B, T, H) or (N, H) -> the same shape; or (B, K, H) at `output_positions` (B, K), the
        positions of the padded batch that the caller reads (zeros at a pad position of an unpadded batch).

        Here every token goes through every layer and the positions are picked at the end; the fast path
        (bert.model.fast) computes the last layer at those positions only, with the same result.
        """
        for layer in self.layer:
            hidden = layer(hidden, layout)
        if output_positions is not None:
            hidden = layout.gather(hidden, output_positions)  # (B, K, H)
        if self.pre_layer_norm:
            hidden = self.LayerNorm(hidden)
        return hidden


class BertPooler(nn.Module):
    """dense + tanh on the [CLS] hidden state: the sentence representation for NSP and classification."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))  # (B, H)
