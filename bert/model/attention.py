"""Self-attention: the module with Hugging Face names, and the three kernels behind it.

The module projects queries, keys and values and hands them, with the batch's layout (see masking.py, where
every mask rule lives), to one kernel:

- `eager_attention`: explicit scores and softmax; the only path that can return attention probabilities.
- `sdpa_attention`: `torch.nn.functional.scaled_dot_product_attention` on (B, A, T, D) with the boolean
  key-padding mask, or no mask when the batch has no padding.
- `varlen_attention` (unpadded): real tokens only, (N, A, D). On CUDA with flash-attn installed it calls
  `flash_attn_varlen_func` with `cu_seqlens`. Otherwise (CPU) it attends once per length bucket: the layout
  stores sequences longest first and groups neighbours of similar length (masking.length_buckets), so each
  bucket is a contiguous slice of rows that is scattered into a (b, S) block, S = the bucket's longest
  sequence, attended with the block's key mask, and gathered back. One block for the whole batch wastes the
  (S^2 - len^2) pairs of every short sequence (with attention dropout on, attention runs unfused on the
  CPU, see below, so those pairs are real work: scores, softmax, dropout and their backward); one call per
  sequence pays the per-call cost B times. The buckets minimise pairs + a per-call cost; the scatter and
  gather are O(N * H) copies, small next to the O(N * H^2) projections.

Attention dropout on the CPU: with dropout_p > 0, SDPA on the CPU runs its unfused math path and draws the
dropout mask with `bernoulli_`, which is slow there (6% of a MiniLM fine-tuning step, plus mask checks of its
own). Training on the CPU with attention dropout therefore runs `eager_attention` with the cheap 16-bit mask
of dropout.py; the masking rule is the eager one (finfo.min of the scores' dtype). Without dropout (eval,
or p = 0) and on CUDA, SDPA and flash-attn keep their fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.config import BertConfig
from bert.model.dropout import Dropout
from bert.model.masking import Layout, LengthBucket, PaddedLayout, UnpaddedLayout

try:  # optional CUDA kernel for the unpadded path
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the installation
    flash_attn_varlen_func = None


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout: nn.Dropout
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v (B, A, T, D) -> context (B, A, T, D) and probabilities (B, A, T, T)."""
    # Scale q (B, A, T, D) rather than the scores (B, A, T, T): the smaller tensor, forward and backward.
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, A, T, T)
    if key_mask is not None:
        # The minimum of the scores' own dtype, not -inf: a row that is all masked stays finite.
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    probs = dropout(torch.softmax(scores, dim=-1))
    return torch.matmul(probs, v), probs


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """q, k, v (B, A, T, D) -> context (B, A, T, D); key_mask (B, 1, 1, T) bool or None (fast kernel).

    A boolean mask (True = attend) is passed as such, never converted by us to an additive float mask; every
    row has at least one True key (masking.key_padding_mask), so no row of the softmax is empty.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, dropout: nn.Dropout
) -> torch.Tensor:
    """q, k, v (B, A, T, D), key_mask (B, 1, 1, T) bool or None -> context (B, A, T, D), by SDPA or eagerly."""
    if dropout.training and dropout.p > 0.0 and q.device.type == "cpu":  # the cheap mask (module docstring)
        return eager_attention(q, k, v, key_mask, dropout)[0]
    return sdpa_attention(q, k, v, key_mask, dropout.p if dropout.training else 0.0)


def _use_flash(x: torch.Tensor) -> bool:
    """Whether the unpadded path runs flash-attn's varlen kernel on `x` (CUDA, half precision)."""
    return flash_attn_varlen_func is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


def varlen_attention(qkv: torch.Tensor, layout: UnpaddedLayout, dropout: nn.Dropout) -> torch.Tensor:
    """qkv (N, 3, A, D) of real tokens only -> context (N, A, D); sequences delimited by layout.cu_seqlens."""
    if _use_flash(qkv):
        q, k, v = qkv.unbind(1)  # each (N, A, D)
        cu, s = layout.cu_seqlens, layout.max_seqlen
        return flash_attn_varlen_func(q, k, v, cu, cu, s, s, dropout_p=dropout.p if dropout.training else 0.0)
    heads, dim = qkv.shape[2:]
    outputs = []
    for bucket, part in zip(layout.buckets, _bucket_parts(qkv, layout)):
        q, k, v = _bucket_block(part, bucket)  # each (b, A, S, D)
        out = attend(q, k, v, bucket.key_mask, dropout)  # (b, A, S, D)
        out = out.transpose(1, 2).reshape(bucket.num_seqs * bucket.seq_len, heads, dim)  # (b * S, A, D)
        if bucket.repad_index is not None:
            out = out.index_select(0, bucket.repad_index)  # (n, A, D)
        outputs.append(out)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def varlen_attention_at_rows(
    q: torch.Tensor, kv: torch.Tensor, layout: UnpaddedLayout, rows: torch.Tensor, dropout: nn.Dropout
) -> torch.Tensor:
    """Queries at some tokens only, keys and values at all: the CPU fallback of `varlen_attention` for the
    last layer (BertEncoder), whose output is read at a few tokens.

    q (M, A, D) at `rows` (M,), sorted rows of the (N, H) tensor; kv (N, 2, A, D) -> context (M, A, D). Each
    bucket attends a (b, A, Sq, D) block of its sequences' queries, Sq = most queries of one of them, to its
    (b, A, S, D) keys and values, with the bucket's key mask.
    """
    heads, dim = kv.shape[2:]
    seq_of_query = torch.searchsorted(layout.cu_seqlens[1:].long(), rows, right=True)  # (M,) stored sequence
    starts = torch.tensor([b.start for b in layout.buckets], device=rows.device)
    query_starts = torch.searchsorted(rows, starts).tolist()  # first query of each bucket
    query_starts.append(rows.numel())
    outputs, first_seq = [], 0
    for i, (bucket, part) in enumerate(zip(layout.buckets, _bucket_parts(kv, layout))):
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
        k, v = _bucket_block(part, bucket)  # each (b, A, S, D)
        out = attend(q_block, k, v, bucket.key_mask, dropout)  # (b, A, Sq, D)
        outputs.append(out.transpose(1, 2).reshape(b * sq, heads, dim).index_select(0, q_index))  # (m, A, D)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _bucket_parts(x: torch.Tensor, layout: UnpaddedLayout) -> tuple[torch.Tensor, ...]:
    """(N, ...) -> one view per length bucket (sequences are stored contiguously).

    One split: its backward is one cat, where slicing each bucket would build a zero (N, ...) gradient per
    bucket and add them up."""
    return x.split([bucket.end - bucket.start for bucket in layout.buckets])


def _bucket_block(part: torch.Tensor, bucket: LengthBucket) -> tuple[torch.Tensor, ...]:
    """A bucket's rows (n, C, A, D) -> C tensors (b, A, S, D), zero-padded to the bucket's longest sequence."""
    b, s = bucket.num_seqs, bucket.seq_len
    channels, heads, dim = part.shape[1:]
    if bucket.repad_index is not None:  # scatter into a zero-padded (b * S) block
        part = part.new_zeros(b * s, channels, heads, dim).index_copy(0, bucket.repad_index, part)
    return part.view(b, s, channels, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: query, key and value projections and a kernel chosen by the config."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.implementation = config.attn_implementation
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def forward(
        self,
        hidden: torch.Tensor,
        layout: Layout,
        output_attentions: bool = False,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H) padded or (N, H) unpadded -> context of the same shape (and probabilities).

        `rows` (M,), sorted: the context is wanted at these rows of the flattened tokens only -> (M, H). The
        unpadded CPU path then projects and attends only those queries; the others attend every query and
        pick the rows (keys and values always cover every token)."""
        heads, dim = self.num_heads, self.head_dim
        if rows is not None and isinstance(layout, UnpaddedLayout) and not _use_flash(hidden):
            q = self.query(hidden.index_select(0, rows)).view(-1, heads, dim)  # (M, A, D)
            weight = torch.cat((self.key.weight, self.value.weight))  # (2H, H)
            bias = torch.cat((self.key.bias, self.value.bias))  # (2H,)
            kv = F.linear(hidden, weight, bias).view(-1, 2, heads, dim)  # (N, 2, A, D)
            context = varlen_attention_at_rows(q, kv, layout, rows, self.dropout)  # (M, A, D)
            return context.reshape(-1, hidden.shape[-1]), None
        # One matmul of width 3H instead of three of width H; the parameters keep Hugging Face's names.
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))  # (3H, H)
        bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))  # (3H,)
        qkv = F.linear(hidden, weight, bias)  # (..., 3H)
        qkv = qkv.view(*hidden.shape[:-1], 3, self.num_heads, self.head_dim)  # (..., 3, A, D)
        if isinstance(layout, PaddedLayout):
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, A, T, D)
            if self.implementation == "eager" or output_attentions:
                context, probs = eager_attention(q, k, v, layout.key_mask, self.dropout)
            else:
                context, probs = attend(q, k, v, layout.key_mask, self.dropout), None
            context = context.transpose(1, 2)  # (B, T, A, D)
        else:
            context, probs = varlen_attention(qkv, layout, self.dropout), None  # (N, A, D)
        context = context.reshape(hidden.shape)
        if rows is not None:
            context = context.reshape(-1, context.shape[-1]).index_select(0, rows)  # (M, H)
        return context, probs


class BertSelfOutput(nn.Module):
    """Output projection of attention, dropout, and the residual LayerNorm (post-LN) of BERT."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.dense(context)) + residual
        return out if self.pre_layer_norm else self.LayerNorm(out)


class BertAttention(nn.Module):
    """Self-attention sub-layer; with pre_layer_norm, LayerNorm runs on its input instead of its output."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)
        self.pre_layer_norm = config.pre_layer_norm

    def forward(
        self,
        hidden: torch.Tensor,
        layout: Layout,
        output_attentions: bool = False,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H) or (N, H) -> the same shape, or (M, H) at `rows` (M,) of the flattened tokens.

        With `rows` (the last layer, see BertEncoder), each kept query attends to every key of its sequence
        as before; the output projection and residual run at the kept rows only, and so do the query
        projection and the attention itself on the unpadded CPU path (BertSelfAttention)."""
        normed = self.output.LayerNorm(hidden) if self.pre_layer_norm else hidden
        context, probs = self.self(normed, layout, output_attentions, rows)  # (..., H) or (M, H)
        if rows is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (M, H)
        return self.output(context, hidden), probs
