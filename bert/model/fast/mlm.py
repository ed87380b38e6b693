"""The MLM head's three CPU speedups: used slots only, the decoder in vocabulary slices, and one gradient
edge into the tied word embeddings.

1. Used slots only (`FastLMPredictionHead`). A batch's P is its largest count of masked tokens, so shorter
   rows pad their slots (about a fifth of them in pretraining batches of realistic lengths). The reference
   head computes every slot and zeroes the unused ones; this one runs the transform and the H x V decoder on
   the used slots only and scatters the logits back (a data-dependent shape: fine on the CPU).

2. Vocabulary slices (`_SlicedLinear`). The decoder maps the P hidden states at the masked positions to
   V = 30,522 logits: a skinny matmul for which the CPU BLAS picks a poor plan, and the same products over
   slices of 2048 rows of the matrix run faster (BENCHMARKS.md, "Figures moved out of the code"). Each
   logit is the same dot product either way. Used in fp32 without autocast only.

3. One gradient edge (`_TiedWordLookup`). The word-embedding matrix is used twice, by the lookup and by the
   decoder. With two uses, autograd builds the lookup's gradient as a second dense (V, H) tensor (filled
   with zeros, a few rows written) and adds the two: three passes over V x H floats for a few hundred rows.
   Here the lookup returns, besides the embeddings, an alias of the matrix, which the decoder of the same
   forward uses (handed over through a `TiedRoute` that the two modules share); the backward receives the
   decoder's dense (V, H) gradient and adds the looked-up rows into it, saving those fills and adds
   (BENCHMARKS.md). The [PAD] row gets nothing from the lookup, as in nn.Embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.heads import BertLMPredictionHead

SLICE_ROWS = 2048  # rows of the (V, H) matrix per matmul


class _SlicedLinear(torch.autograd.Function):
    """x (P, H), weight (V, H), bias (V,) -> x @ weight.T + bias (P, V), slice by slice of the V rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = weight.shape[0]
        out = x.new_empty(x.shape[0], rows)  # (P, V)
        for start in range(0, rows, SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            product = x @ weight[part].t() if bias is None else torch.addmm(bias[part], x, weight[part].t())
            out[:, part] = product  # (P, slice)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # (P, H), (V, H)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_zeros(x.shape)  # (P, H)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.empty_like(weight)  # (V, H)
        for start in range(0, weight.shape[0], SLICE_ROWS):
            part = slice(start, start + SLICE_ROWS)
            grad_part = grad[:, part]  # (P, slice)
            if grad_x is not None:
                grad_x.addmm_(grad_part, weight[part])
            if grad_weight is not None:
                torch.mm(grad_part.t(), x, out=grad_weight[part])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)  # (V,)
        return grad_x, grad_weight, grad_bias


class _TiedWordLookup(torch.autograd.Function):
    """(weight (V, H), ids S) -> (weight[ids] (*S, H), an alias of weight for the tied decoder)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.weight_shape = padding_idx, weight.shape
        return F.embedding(ids, weight, padding_idx), weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_embedded: torch.Tensor | None, grad_weight: torch.Tensor | None):
        (ids,) = ctx.saved_tensors
        if grad_weight is None:
            grad_weight = torch.zeros(
                ctx.weight_shape, dtype=grad_embedded.dtype, device=grad_embedded.device
            )
        elif not grad_weight.is_contiguous():  # e.g. an expanded gradient: never write into it
            grad_weight = grad_weight.contiguous()
        if grad_embedded is not None:
            rows = grad_embedded.reshape(-1, grad_embedded.shape[-1])  # (N, H)
            flat_ids = ids.reshape(-1)
            if ctx.padding_idx is not None:
                rows = rows.masked_fill((flat_ids == ctx.padding_idx).unsqueeze(1), 0.0)
            grad_weight.index_add_(0, flat_ids, rows)  # in place: the decoder's fresh gradient tensor
        return grad_weight, None, None


class TiedRoute:
    """Hands the alias made by one forward's word lookup to the decoder of the same forward."""

    def __init__(self) -> None:
        self.alias: torch.Tensor | None = None


class TiedWordEmbedding(nn.Embedding):
    """The word embeddings, whose lookup also leaves an alias of the matrix in `route` (when training)."""

    route: TiedRoute

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            self.route.alias = None
            return super().forward(ids)
        embedded, self.route.alias = _TiedWordLookup.apply(self.weight, ids, self.padding_idx)
        return embedded


class FastDecoder(nn.Linear):
    """The tied decoder `nn.Linear(H, V)`: sliced over the vocabulary (fp32, no autocast) when `sliced`, and
    projecting with the alias in `route` when one is there (the same parameter, one gradient edge)."""

    sliced: bool = True
    route: TiedRoute | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.route is not None and self.route.alias is not None:
            weight, self.route.alias = self.route.alias, None  # used once
        sliced = (
            self.sliced
            and hidden.dtype == torch.float32
            and weight.dtype == torch.float32
            and not torch.is_autocast_enabled(hidden.device.type)
        )
        if not sliced:
            return F.linear(hidden, weight, self.bias)
        flat = hidden.reshape(-1, hidden.shape[-1])  # (P, H)
        return _SlicedLinear.apply(flat, weight, self.bias).view(*hidden.shape[:-1], -1)


class FastLMPredictionHead(BertLMPredictionHead):
    """`BertLMPredictionHead` that computes the used slots only (module docstring, 1)."""

    def forward(self, hidden: torch.Tensor, used: torch.Tensor | None = None) -> torch.Tensor:
        if used is None or bool(used.all()):
            return self.decoder(self.transform(hidden))  # (..., V)
        shape, flat_used = used.shape, used.reshape(-1)
        rows = flat_used.nonzero().squeeze(1)  # (U,)
        logits = self.decoder(self.transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)))
        # In place into a fresh tensor: only the unused rows are zero-filled, and nothing is cloned.
        out = logits.new_empty(flat_used.numel(), logits.shape[-1])  # (B * P, V)
        out.index_fill_(0, (~flat_used).nonzero().squeeze(1), 0.0)
        return out.index_copy_(0, rows, logits).view(*shape, -1)
