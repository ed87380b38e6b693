"""Pretraining heads: the MLM head (run at the masked positions only) and the NSP head (Hugging Face names)."""

from __future__ import annotations

import torch
from torch import nn

from bert.model.config import BertConfig
from bert.model.layers import activation


class BertPredictionHeadTransform(nn.Module):
    """dense H -> H, activation, LayerNorm: applied before the vocabulary projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """MLM head: the transform, then the decoder whose weight IS the word-embedding matrix, plus its bias.

    `decoder.weight` is tied to `bert.embeddings.word_embeddings.weight` and `decoder.bias` to `bias`, as in
    Hugging Face (both names appear in the state dict; save_pretrained writes each tensor once).
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.weight = word_embeddings.weight  # (V, H), tied
        self.decoder.bias = self.bias  # (V,), tied

    def forward(self, hidden: torch.Tensor, used: torch.Tensor | None = None) -> torch.Tensor:
        """(..., H) hidden states at the positions to predict -> (..., V) logits.

        `used` (...) bool: the slots that hold a masked token; the logits of the others are 0 (computed and
        zeroed here, with static shapes; the fast head does not compute them at all)."""
        logits = self.decoder(self.transform(hidden))
        if used is None:
            return logits
        return torch.where(used.unsqueeze(-1), logits, logits.new_zeros(()))


class BertPreTrainingHeads(nn.Module):
    """`predictions` (MLM) and `seq_relationship` (NSP, a linear layer on the pooled [CLS])."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
