"""Model outputs: plain dataclasses with Hugging Face field names (no losses: see bert/losses.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BaseModelOutput:
    last_hidden_state: torch.Tensor
    """(B, T, H) hidden states of the last layer (zeros at pad tokens on the unpadded path)."""
    pooler_output: torch.Tensor | None = None
    """(B, H) tanh(dense([CLS]))."""
    attentions: tuple[torch.Tensor, ...] | None = None
    """Per layer (B, A, T, T) attention probabilities, with output_attentions=True (eager kernel)."""


@dataclass
class BertForPreTrainingOutput:
    prediction_logits: torch.Tensor
    """(B, P, V) MLM logits at masked_lm_positions (0 at padding slots, position 0), or (B, T, V) at every
    position without them."""
    seq_relationship_logits: torch.Tensor
    """(B, 2) NSP logits: 0 = B follows A, 1 = B is random."""


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor
    """(B, num_labels) classification logits, or (B, 1) regression outputs."""
