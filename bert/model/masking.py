"""Attention masks and token layouts: the ONE place where `attention_mask` becomes what each path needs.

`attention_mask` is (B, T) with 1 for real tokens and 0 for padding (Hugging Face polarity). The encoder only
ever uses a key-padding mask (every query may look at every real key of its own sequence), never a causal one.
`build_layout` turns it into a layout object that the embeddings, the attention kernels and the heads share:

- `PaddedLayout` (paths 'eager' and 'sdpa', and 'unpadded' when the batch has no padding): hidden states are
  (B, T, H). `key_mask` is a boolean (B, 1, 1, T) tensor, True = may attend, or None when the batch has no
  padding at all, so that SDPA runs its fast kernel without a mask.
  * eager: scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min). The fill value is the minimum of the
    dtype the scores are computed in (fp32, fp16 or bf16 under autocast), never -inf and never cast across
    dtypes, so softmax stays finite; masked keys get probability exactly 0 in fp32.
  * sdpa: the same boolean mask is handed to `scaled_dot_product_attention` (True = attend).
- `UnpaddedLayout` (path 'unpadded' with padding): pad tokens are removed BEFORE the embeddings. The real tokens
  of the batch are gathered into a (N, H) tensor, N = number of real tokens, with `cu_seqlens` (B + 1,)
  marking where each sequence starts, as MosaicBERT and ModernBERT do. Every Linear, LayerNorm, GELU and
  dropout then runs on real tokens only. Attention is variable-length on real tokens only (see attention.py).
  The heads never re-pad: `gather` picks [CLS] and the masked positions straight from the (N, H) tensor.

Rows without any real token (fully padded rows) are treated as if every token were real: their queries attend
uniformly over the row, which keeps outputs finite (never NaN, in every dtype) and cannot affect other rows.
Padding never changes the outputs at real tokens: real queries only ever see real keys of their own row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 -> (B, T) bool, True = may attend; fully padded rows attend everywhere (finite outputs)."""
    keep = attention_mask.bool()
    return keep | ~keep.any(dim=1, keepdim=True)


@dataclass
class PaddedLayout:
    """Hidden states stay (B, T, H); `key_mask` is (B, 1, 1, T) bool or None when nothing is padded."""

    batch_size: int
    seq_len: int
    key_mask: torch.Tensor | None  # (B, 1, 1, T), True = may attend

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) per-token ids -> the same (B, T): nothing is removed."""
        return tokens

    def gather(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states at `positions` (B, P) -> (B, P, H)."""
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)  # (B, 1)
        return hidden[rows, positions]

    def cls(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]  # (B, H)

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass
class UnpaddedLayout:
    """Real tokens only: hidden states are (N, H) in row-major order of the (B, T) batch."""

    batch_size: int
    seq_len: int
    indices: torch.Tensor  # (N,) flat index b * T + t of every real token
    cu_seqlens: torch.Tensor  # (B + 1,) int32, sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1]
    max_seqlen: int  # longest sequence (real tokens)
    flat_to_row: torch.Tensor  # (B * T,) row of the (N, H) tensor holding flat index b * T + t (-1: pad)
    repad_index: torch.Tensor  # (N,) flat index into a (B, max_seqlen) re-padded block (fallback kernel)
    repad_key_mask: torch.Tensor | None  # (B, 1, 1, max_seqlen) bool for the re-padded block, None if full

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) per-token ids -> (N,) at real tokens."""
        return tokens.reshape(-1).index_select(0, self.indices)

    def gather(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states at `positions` (B, P) of the padded batch -> (B, P, H); zeros at pads."""
        offsets = torch.arange(self.batch_size, device=positions.device).unsqueeze(1) * self.seq_len
        rows = self.flat_to_row[positions + offsets]  # (B, P)
        picked = hidden[rows.clamp(min=0)]  # (B, P, H)
        return torch.where((rows >= 0).unsqueeze(-1), picked, picked.new_zeros(()))

    def cls(self, hidden: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(self.batch_size, 1, dtype=torch.long, device=hidden.device)
        return self.gather(hidden, zeros).squeeze(1)  # (B, H)

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (B, T, H) with zeros at pad tokens (only for callers that want every position)."""
        out = hidden.new_zeros(self.batch_size * self.seq_len, hidden.shape[-1])
        out = out.index_copy(0, self.indices, hidden)
        return out.view(self.batch_size, self.seq_len, -1)


Layout = PaddedLayout | UnpaddedLayout


def build_layout(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    implementation: str,
    device: torch.device,
) -> Layout:
    """Turn `attention_mask` (B, T) 1 = real, 0 = pad (or None) into the layout of `implementation`."""
    if attention_mask is None or bool(attention_mask.all()):
        # No padding: no mask at all, so SDPA can pick its fastest kernel; nothing to unpad either.
        return PaddedLayout(batch_size, seq_len, None)
    keep = key_padding_mask(attention_mask)  # (B, T) bool
    if implementation != "unpadded":
        return PaddedLayout(batch_size, seq_len, keep[:, None, None, :])
    flat = keep.reshape(-1)  # fully padded rows count as real (see the module docstring)
    indices = flat.nonzero().squeeze(1)  # (N,)
    lengths = keep.sum(dim=1)  # (B,)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_seqlen = int(lengths.max())
    flat_to_row = torch.where(flat, flat.cumsum(0) - 1, -1)  # (B * T,)
    rank = (keep.cumsum(dim=1) - 1).reshape(-1).index_select(0, indices)  # (N,) position within its sequence
    repad_index = (indices // seq_len) * max_seqlen + rank
    repad_keep = torch.arange(max_seqlen, device=device) < lengths.unsqueeze(1)  # (B, S)
    repad_key_mask = None if bool(repad_keep.all()) else repad_keep[:, None, None, :]
    return UnpaddedLayout(
        batch_size, seq_len, indices, cu_seqlens, max_seqlen, flat_to_row, repad_index, repad_key_mask
    )
