"""The batches that flow from the collators to the models and the losses: fields, shapes and meanings.

`attention_mask` is 1 for a real token and 0 for padding (Hugging Face polarity). Labels that must not count
are `IGNORE_INDEX` (-100, the Hugging Face and PyTorch convention): unused masked-position slots, and the
next-sentence label of an MLM-only instance (a document of one sentence has no pair).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are made, so that the label constant stays light
    import torch

IGNORE_INDEX = -100
"""Label of a slot or sequence that the losses and metrics leave out."""


@dataclass
class PretrainingBatch:
    """A batch of NSP pairs with their MLM masks, as `bert.data.collator.PretrainingCollator` builds it."""

    input_ids: torch.Tensor
    """(B, T) token ids, [MASK]/random/kept at the masked positions, [PAD] after each row's length."""
    token_type_ids: torch.Tensor
    """(B, T) 0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding."""
    attention_mask: torch.Tensor
    """(B, T) 1 = real token, 0 = padding."""
    masked_lm_positions: torch.Tensor
    """(B, P) positions of the masked tokens, P = the most of any row; unused slots 0 ([CLS] is never masked)."""
    masked_lm_labels: torch.Tensor
    """(B, P) the original ids at those positions; IGNORE_INDEX in unused slots."""
    next_sentence_label: torch.Tensor | None = None
    """(B,) 0 = B follows A, 1 = B is random, IGNORE_INDEX = no pair; None for MLM-only data."""
    example_ids: torch.Tensor | None = None
    """(B, 2) (epoch, index) of each example in the training set: what the loop consumed, for audits."""
    host_counts: tuple[int, int, int] | None = None
    """(labelled MLM slots, NSP labels, real tokens), counted by the collator with NumPy: the training step
    takes its normalisers from here and reads nothing back from a tensor (None: counted from the tensors)."""
    seq_lengths: tuple[int, ...] | None = None
    """(B,) real tokens of each row, on the host: the unpadded path builds its layout without a read."""

    MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions")

    def model_inputs(self) -> dict[str, Any]:
        """The keyword arguments of `BertForPreTraining.forward` (with `seq_lengths` when known)."""
        inputs: dict[str, Any] = {name: getattr(self, name) for name in self.MODEL_INPUTS}
        if self.seq_lengths is not None:
            inputs["seq_lengths"] = self.seq_lengths
        return inputs

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PretrainingBatch:
        return _to(self, device, non_blocking)

    def pin_memory(self) -> PretrainingBatch:
        """Page-locked copies (the DataLoader calls this with pin_memory=True): copies to a GPU then run
        asynchronously with `to(device, non_blocking=True)`."""
        return _pin(self)

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    def num_masked(self) -> int:
        """Labelled MLM slots (the collator's count, else read from the labels)."""
        if self.host_counts is not None:
            return self.host_counts[0]
        return int((self.masked_lm_labels != IGNORE_INDEX).sum())

    def num_nsp_labels(self) -> int:
        """Sequences with an NSP label (0 in MLM-only data)."""
        if self.host_counts is not None:
            return self.host_counts[1]
        if self.next_sentence_label is None:
            return 0
        return int((self.next_sentence_label != IGNORE_INDEX).sum())

    def num_real_tokens(self) -> int:
        if self.host_counts is not None:
            return self.host_counts[2]
        return int(self.attention_mask.sum())


@dataclass
class PairBatch:
    """A batch of sentence pairs for classification or regression (`bert.finetune_data.PairCollator`)."""

    input_ids: torch.Tensor
    """(B, T) [CLS] A [SEP] B [SEP], [PAD] after each row's length."""
    token_type_ids: torch.Tensor
    """(B, T) 0 for A, 1 for B."""
    attention_mask: torch.Tensor
    """(B, T) 1 = real token, 0 = padding."""
    labels: torch.Tensor
    """(B,) int64 class ids, or float32 scores for regression (0 where the split has no labels)."""
    index: torch.Tensor
    """(B,) row of each pair in its split, to put predictions back in the split's order."""

    MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of `BertForSequenceClassification.forward`."""
        return {name: getattr(self, name) for name in self.MODEL_INPUTS}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairBatch:
        return _to(self, device, non_blocking)

    def pin_memory(self) -> PairBatch:
        return _pin(self)


def _map_tensors(batch: Any, fn: Any) -> Any:
    """A batch of the same type with `fn` applied to every tensor field (other fields kept)."""
    import torch

    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return type(batch)(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})


def _pin(batch: Any) -> Any:
    return _map_tensors(batch, lambda t: t.pin_memory())


def _to(batch: Any, device: torch.device | str, non_blocking: bool) -> Any:
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))
