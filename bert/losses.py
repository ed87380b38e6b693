"""Losses as pure functions of logits and labels: masked LM, next-sentence prediction, and their sum.

The model returns logits only; these functions turn them into named losses plus the counts the training step
needs for accuracies. ALL normalisation lives here. With gradient accumulation or several processes, a
step's MLM loss must be the sum of token losses over every masked token of the GLOBAL batch divided by their
count, and its NSP loss the same over sequences; averaging per-micro-batch means would weight tokens
unequally. So `pretraining_loss` takes the global counts (`mlm_normalizer`, `nsp_normalizer`) and returns
each micro-batch's share of the global objective: summed over the micro-batches and processes of a step,
the shares are exactly the global losses. Without them, the batch's own counts are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bert.batch import IGNORE_INDEX, PretrainingBatch

CrossEntropySum = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of (R, V) logits against (R,) labels, rows labelled -100 left out."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def mlm_loss(
    prediction_logits: torch.Tensor,
    masked_lm_labels: torch.Tensor,
    normalizer: float | torch.Tensor | None = None,
    cross_entropy: CrossEntropySum | None = None,
) -> torch.Tensor:
    """Sum of cross-entropies over labelled slots / `normalizer` (default: labelled slots in this batch).

    prediction_logits (B, P, V) (or (B, T, V) with (B, T) labels), masked_lm_labels (B, P) with -100 in unused
    slots. Computed in fp32 whatever the logits' dtype. An empty batch gives 0, not NaN. `cross_entropy`
    replaces the summed cross-entropy (the fast path's fused one, bert.model.fast).
    """
    logits = prediction_logits.reshape(-1, prediction_logits.shape[-1]).float()  # (B*P, V)
    labels = masked_lm_labels.reshape(-1)  # (B*P,)
    total = (cross_entropy or cross_entropy_sum)(logits, labels)
    if normalizer is None:
        normalizer = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / normalizer


def nsp_loss(
    seq_relationship_logits: torch.Tensor,
    next_sentence_label: torch.Tensor,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of the cross-entropies of the (B, 2) NSP logits against (B,) labels / `normalizer` (default: the
    labelled sequences of this batch). Labels -100 (MLM-only instances) are ignored; none labelled gives 0."""
    labels = next_sentence_label.reshape(-1)
    total = F.cross_entropy(
        seq_relationship_logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if normalizer is None:
        normalizer = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / normalizer


@dataclass
class PretrainingLosses:
    """What `pretraining_loss` returns: the losses (with gradients) and detached int64 counts."""

    loss: torch.Tensor
    """mlm_loss + nsp_loss: the one to backpropagate."""
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor
    """0 in MLM-only data, still attached to the NSP head so that DDP sees every parameter used."""
    mlm_correct: torch.Tensor
    mlm_count: torch.Tensor
    nsp_correct: torch.Tensor
    nsp_count: torch.Tensor


def pretraining_loss(
    outputs,
    batch: PretrainingBatch,
    mlm_normalizer: float | torch.Tensor | None = None,
    nsp_normalizer: float | torch.Tensor | None = None,
    cross_entropy: CrossEntropySum | None = None,
) -> PretrainingLosses:
    """MLM (+ NSP when the batch has NSP labels) losses of a BertForPreTrainingOutput.

    The normalisers are the labelled slots and sequences of the whole global batch (module docstring);
    None uses this batch's own. A batch without NSP labels gives nsp_loss 0 (attached to the graph).
    """
    labels = batch.masked_lm_labels  # (B, P)
    logits = outputs.prediction_logits
    if logits.shape[1] != labels.shape[1]:  # (B, T, V) full-sequence logits: pick the masked positions
        index = batch.masked_lm_positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        logits = logits.gather(1, index)  # (B, P, V)
    mlm = mlm_loss(logits, labels, mlm_normalizer, cross_entropy)
    mlm_correct, mlm_count = mlm_accuracy_counts(logits, labels)
    nsp_logits = outputs.seq_relationship_logits  # (B, 2)
    nsp_labels = batch.next_sentence_label
    no_global_labels = isinstance(nsp_normalizer, (int, float)) and nsp_normalizer == 0
    if nsp_labels is not None and not no_global_labels:
        nsp = nsp_loss(nsp_logits, nsp_labels, nsp_normalizer)
        with torch.no_grad():
            valid = nsp_labels != IGNORE_INDEX
            nsp_correct = ((nsp_logits.argmax(-1) == nsp_labels) & valid).sum()
            nsp_count = valid.sum()
    else:
        # Zero, but connected to the NSP head and the pooler, so that every parameter gets a (zero) gradient
        # and DistributedDataParallel does not stop on unused parameters in MLM-only runs.
        nsp = 0.0 * nsp_logits.float().sum()
        nsp_correct = nsp_count = torch.zeros((), dtype=torch.long, device=labels.device)
    return PretrainingLosses(mlm + nsp, mlm, nsp, mlm_correct, mlm_count, nsp_correct, nsp_count)


@torch.no_grad()
def mlm_correct_slots(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: the slot is labelled and the label's logit is the largest of its (B, P, V) logits.

    Comparing with `amax` is much cheaper than `argmax` over 30k logits on the CPU, and counts the same except
    on an exact tie for the maximum (counted correct). Training and evaluation both use this definition."""
    labelled = labels != IGNORE_INDEX
    label_logit = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, P)
    return (label_logit >= logits.amax(-1)) & labelled


@torch.no_grad()
def mlm_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, labelled) slots of (B, P, V) logits against (B, P) labels, as int64 scalars."""
    return mlm_correct_slots(logits, labels).sum(), (labels != IGNORE_INDEX).sum()


def gradient_factor(num_processes: int, accumulation_steps: int) -> float:
    """What a micro-batch's share of the global losses is multiplied by before `accelerator.backward`.

    The shares are already normalised by the global counts; Accelerate's backward divides by the
    accumulation steps and DDP averages gradients over the processes, so this undoes both: the gradient that
    reaches the optimizer is then exactly that of the global losses."""
    return float(num_processes * accumulation_steps)
