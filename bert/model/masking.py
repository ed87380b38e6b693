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
  marking where each sequence starts, as MosaicBERT and ModernBERT do. Sequences are stored longest first and
  grouped into length buckets, so that the CPU fallback kernel attends blocks of similar lengths. Every
  Linear, LayerNorm, GELU and dropout then runs on real tokens only. Attention is variable-length on real
  tokens only (see attention.py). Position ids are the tokens' columns in the padded batch, as in Hugging Face.
  The heads never re-pad: `rows` maps [CLS] and the masked positions of the padded batch to rows of the
  (N, H) tensor (the tokens the last layer computes, see BertEncoder), and `gather` picks them from it.

Rows without any real token (fully padded rows) are treated as if every token were real: their queries attend
over the whole row, which keeps outputs finite (never NaN, in every dtype) and cannot affect other rows.
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


def flat_index(positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, K) positions in each row -> (B, K) indices b * T + t into the batch flattened to (B * T,)."""
    offsets = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1) * seq_len
    return positions + offsets


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

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions` (B, K) of the padded batch -> (B, K) rows of the hidden states flattened to (B * T, H)."""
        return flat_index(positions, self.seq_len)

    def cls(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]  # (B, H)

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass
class LengthBucket:
    """Consecutive sequences of similar length, attended together in one (b, S) block by the CPU fallback."""

    start: int  # first row of the bucket in the (N, H) tensor
    end: int  # one past its last row
    num_seqs: int  # b
    seq_len: int  # S, the longest sequence of the bucket
    repad_index: torch.Tensor | None  # (end - start,) row in the (b * S) block; None when every length is S
    key_mask: torch.Tensor | None  # (b, 1, 1, S) bool, True = real key; None when every length is S


@dataclass
class UnpaddedLayout:
    """Real tokens only: hidden states are (N, H), sequences stored one after the other, longest first."""

    batch_size: int
    seq_len: int
    indices: torch.Tensor  # (N,) flat index b * T + t (in the padded batch) of each row
    cu_seqlens: (
        torch.Tensor
    )  # (B + 1,) int32: the i-th stored sequence is rows cu_seqlens[i]:cu_seqlens[i + 1]
    max_seqlen: int  # longest sequence (real tokens)
    flat_to_row: torch.Tensor  # (B * T,) row of the (N, H) tensor holding flat index b * T + t (-1: pad)
    buckets: list[LengthBucket]  # the stored sequences, grouped by length for the fallback kernel

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) per-token ids -> (N,) at real tokens."""
        return tokens.reshape(-1).index_select(0, self.indices)

    def gather(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states at `positions` (B, P) of the padded batch -> (B, P, H); zeros at pads."""
        rows = self.rows(positions)  # (B, P)
        picked = hidden[rows.clamp(min=0)]  # (B, P, H)
        return torch.where((rows >= 0).unsqueeze(-1), picked, picked.new_zeros(()))

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions` (B, K) of the padded batch -> (B, K) rows of the (N, H) hidden states; -1 at pads."""
        return self.flat_to_row[flat_index(positions, self.seq_len)]

    def cls(self, hidden: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(self.batch_size, 1, dtype=torch.long, device=hidden.device)
        return self.gather(hidden, zeros).squeeze(1)  # (B, H)

    def to_padded(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (B, T, H) with zeros at pad tokens (only for callers that want every position)."""
        out = hidden.new_zeros(self.batch_size * self.seq_len, hidden.shape[-1])
        out = out.index_copy(0, self.indices, hidden)
        return out.view(self.batch_size, self.seq_len, -1)


# Fixed cost of one more bucket (one more kernel call and its backward), in attended (query, key) pairs:
# measured on CPU (BERT-mini and -base widths) as roughly the time of 8k-16k pairs; the larger value keeps
# the op count low, which matters on a loaded machine where every kernel call waits for all its threads.
BUCKET_COST_PAIRS = 16000
MAX_BUCKETS = 8


def length_buckets(lengths: list[int]) -> list[tuple[int, int]]:
    """Split lengths sorted longest first into ranges [i, j) minimising sum(count * longest^2) + a cost per range.

    Attention on a block costs count * S^2 pairs; one block for all wastes the pairs of padding, one block per
    length pays the per-call cost many times. Exact dynamic programme, O(B^2) on Python ints.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sequences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[i] ** 2 + BUCKET_COST_PAIRS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ranges, j = [], n
    while j > 0:
        ranges.append((cut[j], j))
        j = cut[j]
    ranges.reverse()
    while len(ranges) > MAX_BUCKETS:  # merge the two shortest neighbouring ranges' boundary (rare)
        ranges[-2:] = [(ranges[-2][0], ranges[-1][1])]
    return ranges


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
    # Store sequences longest first, so that sequences of similar length are neighbours (buckets).
    lengths = keep.sum(dim=1)  # (B,)
    order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
    sorted_keep = keep.index_select(0, order)  # (B, T); fully padded rows count as real (module docstring)
    sorted_flat = sorted_keep.reshape(-1).nonzero().squeeze(1)  # (N,)
    indices = order[sorted_flat // seq_len] * seq_len + sorted_flat % seq_len  # (N,) flat index in the batch
    flat_to_row = torch.full((batch_size * seq_len,), -1, dtype=torch.long, device=device)
    flat_to_row[indices] = torch.arange(indices.numel(), device=device)
    sorted_lengths = lengths.index_select(0, order)
    cu_seqlens = F.pad(sorted_lengths.cumsum(0, dtype=torch.int32), (1, 0))
    length_list = sorted_lengths.tolist()
    starts = cu_seqlens.tolist()
    # Rank of each stored token within its sequence, for the re-padded blocks of the fallback kernel.
    rank = (sorted_keep.cumsum(dim=1) - 1).reshape(-1).index_select(0, sorted_flat)  # (N,)
    seq_of_row = sorted_flat // seq_len  # (N,) index of the sequence in stored order
    buckets = []
    for first, last in length_buckets(length_list):
        s, start, end = length_list[first], starts[first], starts[last]
        if all(n == s for n in length_list[first:last]):
            repad_index = key_mask = None  # the rows already form a (b, S) block
        else:
            repad_index = (seq_of_row[start:end] - first) * s + rank[start:end]
            bucket_lengths = sorted_lengths[first:last].unsqueeze(1)  # (b, 1)
            key_mask = (torch.arange(s, device=device) < bucket_lengths)[:, None, None, :]
        buckets.append(LengthBucket(start, end, last - first, s, repad_index, key_mask))
    return UnpaddedLayout(batch_size, seq_len, indices, cu_seqlens, length_list[0], flat_to_row, buckets)
