"""Pretraining losses: the cross-entropy kernel, normalisers, ignored slots, counts, MLM-only batches,
full-sequence logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bert.losses import cross_entropy_sum, mlm_loss, nsp_loss, pretraining_loss
from bert.model.outputs import BertForPreTrainingOutput


def test_mlm_loss_sums_labelled_slots_over_the_normalizer():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    per_token = F.cross_entropy(
        logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    torch.testing.assert_close(mlm_loss(logits, labels), per_token.sum() / 3)
    # A global normaliser (e.g. all masked tokens of an accumulated, multi-process batch) replaces the count.
    torch.testing.assert_close(mlm_loss(logits, labels, normalizer=12), per_token.sum() / 12)
    torch.testing.assert_close(mlm_loss(logits, labels, torch.tensor(6.0)), per_token.sum() / 6)


def test_mlm_loss_of_a_batch_without_labels_is_zero_not_nan():
    loss = mlm_loss(torch.randn(2, 1, 5, requires_grad=True), torch.full((2, 1), -100))
    assert loss.item() == 0 and math.isfinite(loss.item())


def test_mlm_loss_is_computed_in_fp32():
    logits = torch.randn(4, 2, 50).to(torch.bfloat16)
    labels = torch.randint(0, 50, (4, 2))
    loss = mlm_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float().reshape(-1, 50), labels.reshape(-1)))


def test_nsp_loss_is_a_mean_cross_entropy():
    logits = torch.randn(5, 2)
    labels = torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(nsp_loss(logits, labels), F.cross_entropy(logits, labels))


def test_pretraining_loss_adds_losses_and_counts_correct_predictions():
    logits = torch.full((2, 2, 4), -5.0)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[1, 0, 0] = 5.0  # predicts 1, 2 | 0, (unused)
    labels = torch.tensor([[1, 3], [0, -100]])
    nsp_logits = torch.tensor([[2.0, 0.0], [3.0, 0.0]])
    batch = {
        "masked_lm_positions": torch.tensor([[1, 2], [3, 0]]),
        "masked_lm_labels": labels,
        "next_sentence_label": torch.tensor([0, 1]),
    }
    out = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch)
    assert (out["mlm_correct"].item(), out["mlm_count"].item()) == (2, 3)
    assert (out["nsp_correct"].item(), out["nsp_count"].item()) == (1, 2)
    torch.testing.assert_close(out["mlm_loss"], mlm_loss(logits, labels))
    torch.testing.assert_close(out["nsp_loss"], nsp_loss(nsp_logits, batch["next_sentence_label"]))
    torch.testing.assert_close(out["loss"], out["mlm_loss"] + out["nsp_loss"])
    halved = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch, mlm_normalizer=6)
    torch.testing.assert_close(halved["mlm_loss"], out["mlm_loss"] / 2)


def test_mlm_only_batch_has_zero_nsp_terms():
    logits = torch.randn(2, 3, 9, requires_grad=True)
    batch = {
        "masked_lm_positions": torch.zeros(2, 3, dtype=torch.long),
        "masked_lm_labels": torch.randint(0, 9, (2, 3)),
    }
    nsp_logits = torch.randn(2, 2, requires_grad=True)
    out = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch)
    assert out["nsp_loss"].item() == 0 and out["nsp_count"].item() == 0 and out["nsp_correct"].item() == 0
    torch.testing.assert_close(out["loss"], out["mlm_loss"])
    out["loss"].backward()
    assert logits.grad is not None
    assert nsp_logits.grad is not None and (nsp_logits.grad == 0).all()  # attached, for DDP, but no signal


def test_full_sequence_logits_are_gathered_at_the_masked_positions():
    full = torch.randn(2, 6, 5)  # (B, T, V): the model was called without masked_lm_positions
    positions = torch.tensor([[1, 4], [2, 0]])
    labels = torch.tensor([[3, 1], [0, -100]])
    batch = {"masked_lm_positions": positions, "masked_lm_labels": labels}
    gathered = full[torch.arange(2).unsqueeze(1), positions]  # (B, P, V)
    out = pretraining_loss(BertForPreTrainingOutput(full, torch.randn(2, 2)), batch)
    torch.testing.assert_close(out["mlm_loss"], mlm_loss(gathered, labels))


def test_nsp_labels_of_minus_100_are_ignored():
    logits = torch.randn(3, 2)
    labels = torch.tensor([1, -100, 0])
    torch.testing.assert_close(nsp_loss(logits, labels), F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    assert nsp_loss(logits, torch.full((3,), -100)).item() == 0
    batch = {
        "masked_lm_positions": torch.zeros(3, 1, dtype=torch.long),
        "masked_lm_labels": torch.zeros(3, 1, dtype=torch.long),
        "next_sentence_label": labels,
    }
    out = pretraining_loss(BertForPreTrainingOutput(torch.randn(3, 1, 5), logits), batch)
    assert out["nsp_count"].item() == 2
    assert out["nsp_correct"].item() == int((logits.argmax(-1) == labels)[[0, 2]].sum())


def test_mlm_correct_count_matches_argmax_on_random_logits():
    """The count uses `label logit >= max logit` (cheaper than argmax): the same count without ties."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 300, generator=g)
    labels = torch.randint(0, 300, (6, 5), generator=g)
    labels[::2] = logits[::2].argmax(-1)  # half the rows predicted right
    labels[:, -1] = -100
    batch = {"masked_lm_labels": labels, "next_sentence_label": None}
    out = pretraining_loss(BertForPreTrainingOutput(logits, torch.zeros(6, 2)), batch)
    expected = ((logits.argmax(-1) == labels) & (labels != -100)).sum()
    assert out["mlm_correct"].item() == expected.item() >= 12


def test_cross_entropy_sum_equals_torch_in_value_and_gradient():
    logits = (torch.randn(6, 40) * 4).requires_grad_()
    labels = torch.tensor([3, -100, 0, 39, -100, 7])
    ours = cross_entropy_sum(logits, labels)
    (grad_ours,) = torch.autograd.grad(ours * 0.25, logits)
    theirs = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    (grad_theirs,) = torch.autograd.grad(theirs * 0.25, logits)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert (grad_ours[[1, 4]] == 0).all()  # unlabelled rows get no gradient


def test_cross_entropy_sum_does_not_underflow_on_confidently_wrong_logits():
    logits = torch.zeros(2, 5)
    logits[:, 0] = 200.0  # the label's probability is exp(-200): 0 in fp32
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(cross_entropy_sum(logits, labels), torch.tensor(200.0 + 0.0))


def test_cross_entropy_sum_backward_twice_and_without_grad():
    logits = torch.randn(3, 9, requires_grad=True)
    labels = torch.tensor([1, 2, -100])
    loss = cross_entropy_sum(logits, labels)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(first, second)  # the saved gradient is not consumed in place
    with torch.no_grad():
        assert cross_entropy_sum(logits, labels).grad_fn is None
    with pytest.raises(RuntimeError):  # no silent wrong answer for a second derivative
        (grad,) = torch.autograd.grad(cross_entropy_sum(logits, labels), logits, create_graph=True)
        grad.sum().backward()
