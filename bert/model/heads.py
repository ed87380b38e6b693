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


class BertPreTrainingHeads(nn.Module):
    """`predictions` (MLM) and `seq_relationship` (NSP, a linear layer on the pooled [CLS])."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
