"""Input embeddings: word + position + token type, then LayerNorm and dropout (Hugging Face names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bert.model.config import BertConfig
from bert.model.dropout import Dropout


class _TiedWordLookup(torch.autograd.Function):
    """(weight (V, H), ids S) -> (weight[ids] (*S, H), an alias of weight for the tied MLM decoder).

    Why: the word-embedding matrix is used twice, by the lookup here and by the decoder at the end. With two
    uses, autograd builds the lookup's gradient as a second dense (V, H) tensor (filled with zeros, a few
    rows written) and adds the two: three passes over V x H floats for a few hundred rows. Routing the
    decoder's use through this function's alias output instead gives ONE gradient edge into the parameter:
    the backward receives the decoder's dense (V, H) gradient and adds the looked-up rows into it. Measured
    for BERT-mini at batch 8 on a 2-core CPU: about 25 ms a step of fills and adds, out of ~400.
    The [PAD] row (padding_idx) gets nothing from the lookup side, as in nn.Embedding.
    """

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


class BertEmbeddings(nn.Module):
    """Sum of word, learned absolute position and segment embeddings, normalised.

    Works on any leading shape: (B, T) ids give (B, T, H); the (N,) ids of the real tokens of an unpadded
    batch give (N, H), so pad tokens are never embedded.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {config.position_embedding_type!r}: only 'absolute'")
        # padding_idx as in Hugging Face: the [PAD] row gets no gradient from the input side.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        tie_word_weight: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids of shape S (B, T) or (N,) -> embeddings (*S, H) and the word-embedding matrix (V, H) to use for
        a tied decoder: with `tie_word_weight` on the CPU, an alias whose gradient flows back through the
        lookup (see _TiedWordLookup); otherwise the parameter itself."""
        weight = self.word_embeddings.weight
        if (
            tie_word_weight
            and weight.device.type == "cpu"
            and torch.is_grad_enabled()
            and weight.requires_grad
        ):
            word, weight = _TiedWordLookup.apply(weight, input_ids, self.word_embeddings.padding_idx)
        else:
            word = self.word_embeddings(input_ids)
        embeddings = word + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings)), weight
