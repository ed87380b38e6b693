"""Attention masks and token layouts: the ONE place where `attention_mask` becomes what attention needs.

The rules, applied here and by the kernels in attention.py:

1. `attention_mask` is (B, T) with 1 for a real token and 0 for padding (Hugging Face polarity; the opposite
   of `nn.MultiheadAttention`'s `key_padding_mask`). The encoder needs only this key-padding mask: every
   query may attend to every real key of its own sequence. There is never a causal mask.
2. Padding never changes the outputs at real tokens: a real query only ever sees real keys of its own row.
3. No row turns into NaN, in fp32, fp16 or bf16. A row without any real token (fully padded) is treated as
   if every token were real (`key_padding_mask`), so its softmax is never over an empty set; its outputs are
   finite, meaningless, and cannot affect other rows. Masks are boolean (True = may attend) all the way to
   the kernel: no -inf arithmetic, and no `finfo.min` made in one dtype and cast into another (which turns
   into -inf). The eager kernel fills masked scores with the minimum of the scores' OWN dtype.
4. When a batch is unpadded, attention runs on the real tokens only.

`AttentionMasks` builds one layout per batch, shared by the embeddings, every layer and the heads:

- `PaddedLayout` ('eager' and 'sdpa'): hidden states stay (B, T, H); `key_mask` is (B, 1, 1, T) bool.
- `UnpaddedLayout` ('unpadded'): the real tokens are gathered into (N, H) before the embeddings, N = real
  tokens in the batch, sequences one after the other in batch order, `cu_seqlens` (B + 1,) marking where
  each starts (MosaicBERT's and ModernBERT's layout, what flash-attn's variable-length kernel takes). Every
  Linear, LayerNorm, GELU and dropout then runs on real tokens only. Position ids are the tokens' columns in
  the padded batch, as in Hugging Face.

Host synchronisation. Building a padded layout reads nothing back from the device. Building an unpadded one
needs two numbers on the host, N and the longest sequence (`max_seqlen`, which the varlen kernels take):
from the collator's host lengths (`lengths`, what training passes) it reads nothing; without them it reads
them in ONE transfer per batch; nothing per layer. The CPU fast path (bert/model/fast) builds its own,
length-bucketed, layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1 = real, 0 = pad -> (B, T) bool, True = may attend; fully padded rows attend everywhere."""
    keep = attention_mask.bool()
    return keep | ~keep.any(dim=1, keepdim=True)


def flat_index(positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, K) positions in each row -> (B, K) indices b * T + t into the batch flattened to (B * T,)."""
    offsets = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1) * seq_len
    return positions + offsets


@dataclass
class PaddedLayout:
    """Hidden states stay (B, T, H); `key_mask` (B, 1, 1, T) bool, True = may attend (None: no mask given)."""

    batch_size: int
    seq_len: int
    key_mask: torch.Tensor | None
    attentions: list[torch.Tensor] | None = field(default=None, repr=False)
    """When a list, the eager kernel appends each layer's (B, A, T, T) probabilities (output_attentions)."""

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) per-token values -> the same: nothing is removed."""
        return tokens

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden  # (B, T, H)

    def gather(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states at `positions` (B, K) -> (B, K, H)."""
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, K, H)
        return hidden.gather(1, index)


@dataclass
class UnpaddedLayout:
    """Real tokens only: hidden states are (N, H), the sequences one after the other."""

    batch_size: int
    seq_len: int
    indices: torch.Tensor  # (N,) flat index b * T + t (in the padded batch) of each row
    cu_seqlens: torch.Tensor  # (B + 1,) int32: the i-th stored sequence is rows cu_seqlens[i]:cu_seqlens[i+1]
    max_seqlen: int  # longest stored sequence
    key_mask: torch.Tensor  # (B, 1, 1, T) bool of the padded batch, for kernels that re-pad
    flat_to_row: torch.Tensor  # (B * T,) row of the (N, H) tensor holding flat index b * T + t (-1: pad)
    attentions: list[torch.Tensor] | None = field(default=None, repr=False)

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) per-token values -> (N, ...) at real tokens."""
        return tokens.flatten(0, 1).index_select(0, self.indices)

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...) with zeros at pad tokens."""
        out = hidden.new_zeros(self.batch_size * self.seq_len, *hidden.shape[1:])
        out = out.index_copy(0, self.indices, hidden)
        return out.view(self.batch_size, self.seq_len, *hidden.shape[1:])

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions` (B, K) of the padded batch -> (B, K) rows of the (N, H) hidden states; -1 at pads."""
        return self.flat_to_row[flat_index(positions, self.seq_len)]

    def gather(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states at `positions` (B, K) of the padded batch -> (B, K, H); zeros at pads."""
        rows = self.rows(positions)  # (B, K)
        picked = hidden[rows.clamp(min=0)]  # (B, K, H)
        return torch.where((rows >= 0).unsqueeze(-1), picked, picked.new_zeros(()))


Layout = PaddedLayout | UnpaddedLayout


def padded_layout(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int) -> PaddedLayout:
    """The layout of the eager and SDPA kernels: the boolean key-padding mask, no host read."""
    if attention_mask is None:
        return PaddedLayout(batch_size, seq_len, None)
    return PaddedLayout(batch_size, seq_len, key_padding_mask(attention_mask)[:, None, None, :])


def unpadded_layout(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    lengths: Sequence[int] | None = None,
) -> UnpaddedLayout:
    """The layout of the variable-length kernel: real tokens in batch order. With the rows' `lengths` known
    on the host (the collator's) nothing is read back; without, one host read (N, max_seqlen)."""
    if lengths is not None:
        return _unpadded_from_lengths(attention_mask, batch_size, seq_len, device, lengths)
    if attention_mask is None:
        attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
    keep = key_padding_mask(attention_mask)  # (B, T); fully padded rows count as real (rule 3)
    device = keep.device
    lengths = keep.sum(dim=1)  # (B,)
    num_tokens, max_seqlen = torch.stack((lengths.sum(), lengths.max())).tolist()  # the one host read
    # The real tokens' flat indices, in order: a stable sort puts the kept positions (key 0) first.
    # (nonzero would do the same with a host read of its own.)
    flat_keep = keep.reshape(-1)
    indices = torch.argsort((~flat_keep).to(torch.uint8), stable=True)[:num_tokens]  # (N,)
    flat_to_row = torch.full((batch_size * seq_len,), -1, dtype=torch.long, device=device)
    flat_to_row = flat_to_row.index_copy(0, indices, torch.arange(num_tokens, device=device))
    cu_seqlens = torch.cat((lengths.new_zeros(1), lengths.cumsum(0))).to(torch.int32)  # (B + 1,)
    return UnpaddedLayout(
        batch_size, seq_len, indices, cu_seqlens, max_seqlen, keep[:, None, None, :], flat_to_row
    )


def _unpadded_from_lengths(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    lengths: Sequence[int],
) -> UnpaddedLayout:
    """`unpadded_layout` built on the host from the rows' lengths (real tokens are a prefix of each row, as
    the collators lay them out), then copied without waiting: no value comes back from the device.

    `max_seqlen` is the padded width T, an upper bound that the varlen kernels accept (they stop at each
    sequence's end, given by cu_seqlens): a compiled layer then sees the same number for every batch."""
    rows = torch.as_tensor([n if n > 0 else seq_len for n in lengths], dtype=torch.long)  # rule 3
    keep = torch.arange(seq_len).unsqueeze(0) < rows.unsqueeze(1)  # (B, T) on the host
    indices = keep.reshape(-1).nonzero().squeeze(1)  # (N,) a host computation
    flat_to_row = torch.full((batch_size * seq_len,), -1, dtype=torch.long)
    flat_to_row[indices] = torch.arange(indices.numel())
    cu_seqlens = torch.cat((rows.new_zeros(1), rows.cumsum(0))).to(torch.int32)  # (B + 1,)
    moved = [_to_device(x, device) for x in (indices, cu_seqlens, flat_to_row)]
    if attention_mask is None:
        key_mask = _to_device(keep, device)
    else:
        key_mask = key_padding_mask(attention_mask)
    return UnpaddedLayout(
        batch_size, seq_len, moved[0], moved[1], seq_len, key_mask[:, None, None, :], moved[2]
    )


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if torch.device(device).type == "cuda":
        x = x.pin_memory()  # page-locked: the copy runs asynchronously
    return x.to(device, non_blocking=True)


class AttentionMasks(nn.Module):
    """`attention_mask` (B, T) -> the layout of the configured attention path, once per batch.

    A module (without parameters, so state dicts are unchanged) so that the fast path can swap in its own
    layout builder at one place (bert.model.fast)."""

    def __init__(self, implementation: str) -> None:
        super().__init__()
        self.implementation = implementation

    def forward(
        self,
        attention_mask: torch.Tensor | None,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        probabilities: bool = False,
        lengths: Sequence[int] | None = None,
    ) -> Layout:
        """`probabilities`: attention probabilities are asked for, so a padded layout (the eager kernel's)
        whatever the path; `lengths`: the rows' real tokens, known on the host (the unpadded path then reads
        nothing back)."""
        if self.implementation == "unpadded" and not probabilities:
            return unpadded_layout(attention_mask, batch_size, seq_len, device, lengths)
        return padded_layout(attention_mask, batch_size, seq_len)

    def extra_repr(self) -> str:
        return self.implementation
