"""Length-bucketed variable-length attention for the CPU, and attention with the cheap dropout mask.

Without flash-attn, the reference unpadded kernel re-pads the whole batch to (B, T): every short sequence
then pays for T^2 (query, key) pairs. With attention dropout on, attention on the CPU runs unfused (SDPA's
math path, which also draws its mask with the slow `bernoulli_`), so those pairs are real work: scores,
softmax, dropout and their backward. Here the unpadded layout stores the sequences longest first and groups
neighbours of similar length into buckets (`length_buckets`); each bucket is a contiguous slice of rows,
scattered into a (b, S) block, S = the bucket's longest sequence, attended with the block's key mask, and
gathered back. One block for the batch wastes the (S^2 - len^2) pairs of every short sequence; one call
per sequence pays the per-call cost B times; the buckets minimise pairs + a per-call cost. The scatter and
gather are O(N * H) copies, small next to the O(N * H^2) projections.

In train mode with attention dropout, blocks run the eager kernel with the cheap 16-bit mask (dropout.py);
without dropout, SDPA. The mask rules are those of bert/model/masks.py: boolean key masks, finfo.min of the
scores' own dtype in the eager kernel, fully padded rows attend everywhere.

These layouts read lengths back to the host (`tolist`) and have data-dependent shapes: free on the CPU,
a synchronisation on CUDA, where the reference path is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bert.model.attention import ScaledDotProductAttention, sdpa_attention
from bert.model.fast.dropout import cheap_dropout
from bert.model.masks import AttentionMasks, Layout, PaddedLayout, UnpaddedLayout, key_padding_mask

# Fixed cost of one more bucket (one more kernel call and its backward), in attended (query, key) pairs:
# measured on CPU (BERT-mini and -base widths) as roughly the time of 8k-16k pairs; the larger value keeps
# the op count low, which matters on a loaded machine where every kernel call waits for all its threads.
BUCKET_COST_PAIRS = 16000
MAX_BUCKETS = 8


def length_buckets(lengths: list[int]) -> list[tuple[int, int]]:
    """Split lengths sorted longest first into ranges [i, j) minimising sum(count * longest^2) + a cost per range.

    Exact dynamic programme, O(B^2) on Python ints.
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
    while len(ranges) > MAX_BUCKETS:  # merge the last two ranges (rare)
        ranges[-2:] = [(ranges[-2][0], ranges[-1][1])]
    return ranges


@dataclass
class LengthBucket:
    """Consecutive stored sequences of similar length, attended together in one (b, S) block."""

    start: int  # first row of the bucket in the (N, H) tensor
    end: int  # one past its last row
    num_seqs: int  # b
    seq_len: int  # S, the longest sequence of the bucket
    repad_index: torch.Tensor | None  # (end - start,) row in the (b * S) block; None when every length is S
    key_mask: torch.Tensor | None  # (b, 1, 1, S) bool, True = real key; None when every length is S


@dataclass
class BucketedLayout(UnpaddedLayout):
    """An `UnpaddedLayout` whose sequences are stored longest first, grouped into length buckets.

    Any code written for `UnpaddedLayout` works with it (rows are found through `indices` and
    `flat_to_row`, never by assuming batch order)."""

    buckets: list[LengthBucket] = field(default_factory=list)


@dataclass
class QueryRows:
    """The layout of attention whose queries are some tokens only: `rows` (M,), sorted rows of the (N, H)
    tokens stored by `keys`, the layout of the keys and values (the last layer at the heads' tokens,
    encoder.py). `FastAttention` attends it with `bucketed_attention_at_rows`."""

    keys: BucketedLayout
    rows: torch.Tensor


def bucketed_layout(
    attention_mask: torch.Tensor | None, batch_size: int, seq_len: int, device
) -> BucketedLayout:
    """The unpadded layout with sequences longest first and length buckets (module docstring)."""
    if attention_mask is None:
        attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
    keep = key_padding_mask(attention_mask)  # (B, T); fully padded rows count as real
    lengths = keep.sum(dim=1)  # (B,)
    order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
    sorted_keep = keep.index_select(0, order)  # (B, T)
    sorted_flat = sorted_keep.reshape(-1).nonzero().squeeze(1)  # (N,)
    indices = order[sorted_flat // seq_len] * seq_len + sorted_flat % seq_len  # (N,) flat index in the batch
    flat_to_row = torch.full((batch_size * seq_len,), -1, dtype=torch.long, device=device)
    flat_to_row[indices] = torch.arange(indices.numel(), device=device)
    sorted_lengths = lengths.index_select(0, order)
    cu_seqlens = F.pad(sorted_lengths.cumsum(0, dtype=torch.int32), (1, 0))
    length_list = sorted_lengths.tolist()
    starts = cu_seqlens.tolist()
    # Rank of each stored token within its sequence, for the re-padded blocks.
    rank = (sorted_keep.cumsum(dim=1) - 1).reshape(-1).index_select(0, sorted_flat)  # (N,)
    seq_of_row = sorted_flat // seq_len  # (N,) index of the sequence in stored order
    buckets = []
    for first, last in length_buckets(length_list):
        s, start, end = length_list[first], starts[first], starts[last]
        if all(n == s for n in length_list[first:last]):
            repad_index = bucket_mask = None  # the rows already form a (b, S) block
        else:
            repad_index = (seq_of_row[start:end] - first) * s + rank[start:end]
            bucket_lengths = sorted_lengths[first:last].unsqueeze(1)  # (b, 1)
            bucket_mask = (torch.arange(s, device=device) < bucket_lengths)[:, None, None, :]
        buckets.append(LengthBucket(start, end, last - first, s, repad_index, bucket_mask))
    return BucketedLayout(
        batch_size,
        seq_len,
        indices,
        cu_seqlens,
        length_list[0],
        keep[:, None, None, :],
        flat_to_row,
        buckets=buckets,
    )


class BucketedMasks(AttentionMasks):
    """`AttentionMasks` that builds a `BucketedLayout`, whatever path is configured (the padded paths give
    the same outputs at real tokens, see test_model_masks.py), unless attention probabilities are asked for."""

    def forward(
        self,
        attention_mask: torch.Tensor | None,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        probabilities: bool = False,
        lengths=None,  # noqa: ANN001 - the host lengths the reference layout may use; read here anyway
    ) -> Layout:
        if probabilities:
            return super().forward(attention_mask, batch_size, seq_len, device, probabilities)
        return bucketed_layout(attention_mask, batch_size, seq_len, device)


def cheap_eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """q (B, A, Tq, D), k and v (B, A, T, D) -> (B, A, Tq, D): the eager kernel with the cheap dropout mask.

    q is scaled rather than the scores: the smaller tensor, forward and backward."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, A, Tq, T)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    probs = cheap_dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.matmul(probs, v)


def attend_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    cheap_dropout: bool = True,
) -> torch.Tensor:
    """(B, A, Tq, D) attention of one block: with dropout the cheap eager kernel, otherwise SDPA."""
    if dropout_p > 0.0 and cheap_dropout:
        return cheap_eager_attention(q, k, v, key_mask, dropout_p)
    return sdpa_attention(q, k, v, key_mask, dropout_p)


def _bucket_parts(x: torch.Tensor, layout: BucketedLayout) -> tuple[torch.Tensor, ...]:
    """(N, ...) -> one view per length bucket (sequences are stored contiguously).

    One split: its backward is one cat, where slicing each bucket would build a zero (N, ...) gradient per
    bucket and add them up."""
    return x.split([bucket.end - bucket.start for bucket in layout.buckets])


def _bucket_block(part: torch.Tensor, bucket: LengthBucket) -> torch.Tensor:
    """A bucket's rows (n, A, D) -> (b, A, S, D), zero-padded to the bucket's longest sequence."""
    b, s = bucket.num_seqs, bucket.seq_len
    if bucket.repad_index is not None:  # scatter into a zero-padded (b * S) block
        part = part.new_zeros(b * s, *part.shape[1:]).index_copy(0, bucket.repad_index, part)
    return part.view(b, s, *part.shape[1:]).transpose(1, 2)


def bucketed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BucketedLayout,
    dropout_p: float,
    cheap_dropout: bool = True,
) -> torch.Tensor:
    """q, k, v (N, A, D) of real tokens -> context (N, A, D), attended bucket by bucket."""
    heads, dim = q.shape[1:]
    outputs = []
    for bucket, qp, kp, vp in zip(layout.buckets, *(_bucket_parts(x, layout) for x in (q, k, v))):
        blocks = (_bucket_block(x, bucket) for x in (qp, kp, vp))  # each (b, A, S, D)
        out = attend_block(*blocks, bucket.key_mask, dropout_p, cheap_dropout)  # (b, A, S, D)
        out = out.transpose(1, 2).reshape(bucket.num_seqs * bucket.seq_len, heads, dim)  # (b * S, A, D)
        if bucket.repad_index is not None:
            out = out.index_select(0, bucket.repad_index)  # (n, A, D)
        outputs.append(out)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def bucketed_attention_at_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BucketedLayout,
    rows: torch.Tensor,
    dropout_p: float,
    cheap_dropout: bool = True,
) -> torch.Tensor:
    """Queries at some tokens only, keys and values at all of them (the last layer, see encoder.py).

    q (M, A, D) at `rows` (M,), sorted rows of the (N, H) tensor; k, v (N, A, D) -> context (M, A, D). Each
    bucket attends a (b, A, Sq, D) block of its sequences' queries, Sq = most queries of one of them, to its
    (b, A, S, D) keys and values, with the bucket's key mask.
    """
    heads, dim = k.shape[1:]
    seq_of_query = torch.searchsorted(layout.cu_seqlens[1:].long(), rows, right=True)  # (M,) stored sequence
    starts = torch.tensor([b.start for b in layout.buckets], device=rows.device)
    query_starts = torch.searchsorted(rows, starts).tolist()  # first query of each bucket
    query_starts.append(rows.numel())
    outputs, first_seq = [], 0
    parts = zip(layout.buckets, _bucket_parts(k, layout), _bucket_parts(v, layout))
    for i, (bucket, kp, vp) in enumerate(parts):
        b = bucket.num_seqs
        q0, q1 = query_starts[i], query_starts[i + 1]
        seq, first_seq = seq_of_query[q0:q1] - first_seq, first_seq + b  # (m,) sequence within the bucket
        if q1 == q0:
            continue  # no query in this bucket
        counts = torch.bincount(seq, minlength=b)  # (b,) queries per sequence
        sq = int(counts.max())
        first_query = counts.cumsum(0) - counts  # (b,) index of each sequence's first query
        rank = torch.arange(q1 - q0, device=rows.device) - first_query[seq]  # (m,) rank within its sequence
        q_index = seq * sq + rank  # (m,) row in the (b * Sq) query block
        q_block = q.new_zeros(b * sq, heads, dim).index_copy(0, q_index, q[q0:q1])
        q_block = q_block.view(b, sq, heads, dim).transpose(1, 2)  # (b, A, Sq, D)
        k_block, v_block = _bucket_block(kp, bucket), _bucket_block(vp, bucket)  # each (b, A, S, D)
        out = attend_block(q_block, k_block, v_block, bucket.key_mask, dropout_p, cheap_dropout)
        outputs.append(out.transpose(1, 2).reshape(b * sq, heads, dim).index_select(0, q_index))  # (m, A, D)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class FastAttention(ScaledDotProductAttention):
    """The attention entry point with the fast kernels: buckets for a `BucketedLayout`, and the cheap
    dropout mask (when `cheap_dropout`) wherever attention dropout is drawn outside a fused kernel."""

    def __init__(self, implementation: str, dropout_p: float, cheap_dropout: bool = True) -> None:
        super().__init__(implementation, dropout_p)
        self.cheap_dropout = cheap_dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
        p = self.dropout_p if self.training else 0.0
        if isinstance(layout, QueryRows):  # q (M, A, D) at layout.rows; k, v (N, A, D)
            return bucketed_attention_at_rows(q, k, v, layout.keys, layout.rows, p, self.cheap_dropout)
        if isinstance(layout, BucketedLayout):
            return bucketed_attention(q, k, v, layout, p, self.cheap_dropout)
        if isinstance(layout, PaddedLayout) and layout.attentions is None and p > 0 and self.cheap_dropout:
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, A, T, D)
            return cheap_eager_attention(q, k, v, layout.key_mask, p).transpose(1, 2)
        return super().forward(q, k, v, layout)

    @classmethod
    def replacing(cls, module: ScaledDotProductAttention, cheap_dropout: bool) -> FastAttention:
        fast = cls(module.implementation, module.dropout_p, cheap_dropout)
        return fast.train(module.training)
