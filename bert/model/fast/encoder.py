"""The encoder with its last layer computed only at the tokens the heads read.

The pretraining heads read [CLS] and the masked positions (about 16% of the tokens), classification [CLS]
alone. The last layer's keys and values are still needed at every token (each kept query attends to its
whole sequence), but its query projection, attention, output projection, residuals, LayerNorms and
feed-forward only at the kept tokens. Each kept token is computed exactly as by the reference encoder,
which runs the last layer everywhere and picks the positions afterwards. For BERT-mini (4 layers) that is
about 18% of the encoder's matmul work.

Two layouts are handled:
- `PaddedLayout`: the kept positions (B, K) are gathered into a (B, K, H) block; shapes are static and
  nothing is read back to the host (usable on CUDA and under torch.compile). Padding slots repeat [CLS].
- `BucketedLayout` (the CPU's unpadded layout): each kept token once (`torch.unique`), attended with
  `bucketed_attention_at_rows`.
Any other layout (flash-attn's unpadded one) runs the reference last layer.
"""

from __future__ import annotations

import torch

from bert.model.fast.attention import BucketedLayout, FastAttention, bucketed_attention_at_rows
from bert.model.layers import BertEncoder, BertLayer
from bert.model.masks import Layout, PaddedLayout


def _attention_at(layer: BertLayer, hidden: torch.Tensor, queries: torch.Tensor, layout: Layout, rows=None):
    """The attention sub-layer of `layer` for the query tokens `queries` only; keys and values at `hidden`.

    hidden (B, T, H) with queries (B, K, H), or hidden (N, H) with queries (M, H) at `rows` (M,) of a
    BucketedLayout -> the sub-layer's output at the queries, with its residual: (B, K, H) or (M, H).
    """
    attention = layer.attention
    self_attn = attention.self
    pre = attention.pre_layer_norm
    normed = attention.output.LayerNorm(hidden) if pre else hidden
    normed_q = attention.output.LayerNorm(queries) if pre else queries
    q = self_attn.heads(self_attn.query(normed_q))  # (B, K, A, D) or (M, A, D)
    k = self_attn.heads(self_attn.key(normed))  # (B, T, A, D) or (N, A, D)
    v = self_attn.heads(self_attn.value(normed))
    kernel = self_attn.attend
    p = kernel.dropout_p if kernel.training else 0.0
    if rows is None:
        context = kernel(q, k, v, layout)  # (B, K, A, D): padded queries attend to every key
    else:
        cheap = isinstance(kernel, FastAttention) and kernel.cheap_dropout
        context = bucketed_attention_at_rows(q, k, v, layout, rows, p, cheap)  # (M, A, D)
    return attention.output(context.flatten(-2), queries)


class HeadRowsEncoder(BertEncoder):
    """`BertEncoder` whose last layer is computed at `output_positions` only (module docstring)."""

    def forward(
        self, hidden: torch.Tensor, layout: Layout, output_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        fast = isinstance(layout, (PaddedLayout, BucketedLayout)) and len(self.layer) > 0
        if output_positions is None or not fast:
            return super().forward(hidden, layout, output_positions)
        for layer in self.layer[:-1]:
            hidden = layer(hidden, layout)
        last = self.layer[-1]
        if isinstance(layout, PaddedLayout):
            queries = layout.gather(hidden, output_positions)  # (B, K, H)
            hidden = last.feed_forward(_attention_at(last, hidden, queries, layout))  # (B, K, H)
        else:
            slot_rows = layout.rows(output_positions)  # (B, K) rows of the (N, H) tensor, -1 at pads
            # Each token once (unused MLM slots and [CLS] are all position 0 of their row), sorted.
            rows, inverse = torch.unique(slot_rows.clamp(min=0), return_inverse=True)  # (M,), (B, K)
            queries = hidden.index_select(0, rows)  # (M, H)
            kept = last.feed_forward(_attention_at(last, hidden, queries, layout, rows))  # (M, H)
            hidden = kept.index_select(0, inverse.reshape(-1)).view(*inverse.shape, -1)  # (B, K, H)
            hidden = torch.where((slot_rows >= 0).unsqueeze(-1), hidden, hidden.new_zeros(()))
        if self.pre_layer_norm:
            hidden = self.LayerNorm(hidden)
        return hidden
