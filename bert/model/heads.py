"""Pretraining heads: the MLM head (on masked positions only) and the NSP head (Hugging Face names)."""

from __future__ import annotations

import torch
from torch import nn

from bert.model.config import BertConfig
from bert.model.layers import activation
from bert.model.projection import VocabularyProjection


class BertPredictionHeadTransform(nn.Module):
    """dense H -> H, GELU, LayerNorm: applied before the vocabulary projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """MLM head: transform, then the decoder whose weight IS the word-embedding matrix, plus its own bias.

    `decoder.weight` is tied to `bert.embeddings.word_embeddings.weight` and `decoder.bias` to `bias`, as in
    Hugging Face (both names appear in the state dict; save_pretrained writes each tensor once).
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = VocabularyProjection(config.hidden_size, config.vocab_size)  # sliced on the CPU
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.weight = word_embeddings.weight  # (V, H), tied
        self.decoder.bias = self.bias  # (V,), tied

    def forward(self, hidden: torch.Tensor, word_weight: torch.Tensor | None = None) -> torch.Tensor:
        """(..., H) hidden states at the positions to predict -> (..., V) logits.

        `word_weight`: the (V, H) matrix to project with, when the caller passes the alias of the tied
        word embeddings (BertEmbeddings.forward); by default `decoder.weight`, the same parameter."""
        return self.decoder(self.transform(hidden), word_weight)

    def at_slots(
        self, hidden: torch.Tensor, used: torch.Tensor, word_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden (B, P, H) at the MLM slots, used (B, P) bool -> (B, P, V) logits, 0 at unused slots.

        The batch's P is its largest count of masked tokens, so shorter rows pad their slots (about a fifth
        of them in pretraining batches of realistic lengths). The head skips those: the transform and the
        H x V decoder run on the U used slots only, and the logits are put back in place.
        """
        b, p, h = hidden.shape
        if bool(used.all()):
            return self(hidden, word_weight)  # (B, P, V)
        flat_used = used.reshape(-1)
        rows = flat_used.nonzero().squeeze(1)  # (U,)
        logits = self(hidden.reshape(b * p, h).index_select(0, rows), word_weight)  # (U, V)
        # In place into a fresh tensor: only the unused rows are zero-filled, and nothing is cloned.
        out = logits.new_empty(b * p, logits.shape[-1])  # (B * P, V)
        out.index_fill_(0, (~flat_used).nonzero().squeeze(1), 0.0)
        return out.index_copy_(0, rows, logits).view(b, p, -1)


class BertPreTrainingHeads(nn.Module):
    """`predictions` (MLM) and `seq_relationship` (NSP, a linear layer on the pooled [CLS])."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
