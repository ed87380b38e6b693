"""Pretraining evaluation metrics: MLM loss, accuracy and perplexity; NSP loss and accuracy.

Metrics are computed as per-sequence sums (`example_stats`), so that `accelerator.gather_for_metrics` can
drop the duplicates Accelerate adds to even out the last batch across processes, and then totalled over the
whole evaluation (`summarize`): MLM numbers are averages over masked tokens, NSP over sequences, never
averages of per-batch averages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bert.batch import IGNORE_INDEX
from bert.losses import mlm_correct_slots


@torch.no_grad()
def example_stats(
    prediction_logits: torch.Tensor,  # (B, P, V) logits at the masked positions
    masked_lm_labels: torch.Tensor,  # (B, P) original ids, -100 in unused slots
    seq_relationship_logits: torch.Tensor | None = None,  # (B, 2)
    next_sentence_label: torch.Tensor | None = None,  # (B,)
) -> dict[str, torch.Tensor]:
    """Per-sequence sums, each (B,): mlm_loss, mlm_correct, mlm_count, and nsp_loss, nsp_correct, nsp_count."""
    logits = prediction_logits.float()
    valid = masked_lm_labels != IGNORE_INDEX  # (B, P)
    token_loss = F.cross_entropy(
        logits.transpose(1, 2), masked_lm_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, P), 0 at ignored slots
    correct = mlm_correct_slots(logits, masked_lm_labels)  # (B, P)
    stats = {
        "mlm_loss": token_loss.sum(1),
        "mlm_correct": correct.sum(1).float(),
        "mlm_count": valid.sum(1).float(),
    }
    if seq_relationship_logits is not None and next_sentence_label is not None:
        nsp_logits = seq_relationship_logits.float()
        # -100: an MLM-only instance (single-sentence document) without an NSP label; not counted
        stats["nsp_loss"] = F.cross_entropy(
            nsp_logits, next_sentence_label, ignore_index=IGNORE_INDEX, reduction="none"
        )
        stats["nsp_correct"] = (nsp_logits.argmax(-1) == next_sentence_label).float()
        stats["nsp_count"] = (next_sentence_label != IGNORE_INDEX).float()
    return stats


def summarize(totals: dict[str, float]) -> dict[str, float]:
    """Totals of `example_stats` -> mlm_loss, mlm_accuracy, mlm_perplexity (and nsp_loss, nsp_accuracy)."""
    out: dict[str, float] = {}
    count = totals.get("mlm_count", 0.0)
    if count > 0:
        out["mlm_loss"] = totals["mlm_loss"] / count
        out["mlm_accuracy"] = totals["mlm_correct"] / count
        # exp of the mean token loss; capped so that an untrained model does not overflow to inf
        out["mlm_perplexity"] = math.exp(min(out["mlm_loss"], 50.0))
    nsp = totals.get("nsp_count", 0.0)
    if nsp > 0:
        out["nsp_loss"] = totals["nsp_loss"] / nsp
        out["nsp_accuracy"] = totals["nsp_correct"] / nsp
    return out


class MetricTotals:
    """Running sums of `example_stats` over evaluation batches, kept on the batches' device: `result` reads
    them back in one transfer, so an evaluation waits for the device once, not once per batch."""

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            total = value.detach().double().sum()
            self.totals[key] = self.totals[key] + total if key in self.totals else total

    def result(self, extra: torch.Tensor | None = None):
        """The summarised metrics; with `extra` (a 1-d tensor on the same device) read in the same transfer,
        returns (metrics, extra's values)."""
        names = list(self.totals)
        parts = [torch.stack([self.totals[n] for n in names])] if names else []
        if extra is not None:
            parts.append(extra.double().reshape(-1).to(parts[0].device if parts else extra.device))
        values = torch.cat(parts).tolist() if parts else []
        metrics = summarize(dict(zip(names, values[: len(names)])))
        if extra is None:
            return metrics
        return metrics, values[len(names) :]
