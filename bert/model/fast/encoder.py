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
  `bucketed_attention_at_rows` (the kernel's choice for a `QueryRows` layout).
Both call the reference attention sub-layer (`BertAttention` with `queries`): one implementation of it.
Any other layout (flash-attn's unpadded one) runs the reference last layer.
"""

from __future__ import annotations

import torch

from bert.model.fast.attention import BucketedLayout, QueryRows
from bert.model.layers import BertEncoder
from bert.model.masks import Layout, PaddedLayout


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
            # padded queries attend to every key with the layer's own kernel
            hidden = last.feed_forward(last.attention(hidden, layout, queries))  # (B, K, H)
        else:
            slot_rows = layout.rows(output_positions)  # (B, K) rows of the (N, H) tensor, -1 at pads
            # Each token once (unused MLM slots and [CLS] are all position 0 of their row), sorted.
            rows, inverse = torch.unique(slot_rows.clamp(min=0), return_inverse=True)  # (M,), (B, K)
            queries = hidden.index_select(0, rows)  # (M, H)
            kept = last.feed_forward(last.attention(hidden, QueryRows(layout, rows), queries))  # (M, H)
            hidden = kept.index_select(0, inverse.reshape(-1)).view(*inverse.shape, -1)  # (B, K, H)
            hidden = torch.where((slot_rows >= 0).unsqueeze(-1), hidden, hidden.new_zeros(()))
        if self.pre_layer_norm:
            hidden = self.LayerNorm(hidden)
        return hidden
