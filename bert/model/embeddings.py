"""Input embeddings: word + learned absolute position + token type, then LayerNorm and dropout (HF names)."""

from __future__ import annotations

import torch
from torch import nn

from bert.model.config import BertConfig


class BertEmbeddings(nn.Module):
    """Sum of word, position and segment embeddings, normalised.

    Works on any leading shape: (B, T) ids give (B, T, H); the (N,) ids of the real tokens of an unpadded
    batch give (N, H), so pad tokens are never embedded.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {config.position_embedding_type!r}: only 'absolute'")
        # padding_idx as in Hugging Face: the [PAD] row gets no gradient from the lookup.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """ids of shape S, (B, T) or (N,) -> embeddings (*S, H)."""
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))
