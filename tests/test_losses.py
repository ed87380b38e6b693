"""Pretraining losses: normalisers (a micro-batch's share of the global objective), ignored slots, counts,
MLM-only batches, full-sequence logits. (The fused cross-entropy of the fast path: test_model_fast.py.)"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bert.batch import PretrainingBatch
from bert.losses import mlm_loss, nsp_loss, pretraining_loss
from bert.model.outputs import BertForPreTrainingOutput


def _batch(positions, labels, nsp=None) -> PretrainingBatch:
    """A batch for the losses: only the label fields matter to them."""
    b, p = labels.shape
    unused = torch.zeros(b, 1, dtype=torch.long)
    return PretrainingBatch(unused, unused, unused, positions, labels, nsp)


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
    batch = _batch(torch.tensor([[1, 2], [3, 0]]), labels, torch.tensor([0, 1]))
    out = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch)
    assert (out.mlm_correct.item(), out.mlm_count.item()) == (2, 3)
    assert (out.nsp_correct.item(), out.nsp_count.item()) == (1, 2)
    torch.testing.assert_close(out.mlm_loss, mlm_loss(logits, labels))
    torch.testing.assert_close(out.nsp_loss, nsp_loss(nsp_logits, batch.next_sentence_label))
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)
    halved = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch, mlm_normalizer=6)
    torch.testing.assert_close(halved.mlm_loss, out.mlm_loss / 2)


def test_mlm_only_batch_has_zero_nsp_terms():
    logits = torch.randn(2, 3, 9, requires_grad=True)
    batch = _batch(torch.zeros(2, 3, dtype=torch.long), torch.randint(0, 9, (2, 3)))
    nsp_logits = torch.randn(2, 2, requires_grad=True)
    out = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), batch)
    assert out.nsp_loss.item() == 0 and out.nsp_count.item() == 0 and out.nsp_correct.item() == 0
    torch.testing.assert_close(out.loss, out.mlm_loss)
    out.loss.backward()
    assert logits.grad is not None
    assert nsp_logits.grad is not None and (nsp_logits.grad == 0).all()  # attached, for DDP, but no signal


def test_full_sequence_logits_are_gathered_at_the_masked_positions():
    full = torch.randn(2, 6, 5)  # (B, T, V): the model was called without masked_lm_positions
    positions = torch.tensor([[1, 4], [2, 0]])
    labels = torch.tensor([[3, 1], [0, -100]])
    batch = _batch(positions, labels)
    gathered = full[torch.arange(2).unsqueeze(1), positions]  # (B, P, V)
    out = pretraining_loss(BertForPreTrainingOutput(full, torch.randn(2, 2)), batch)
    torch.testing.assert_close(out.mlm_loss, mlm_loss(gathered, labels))


def test_nsp_labels_of_minus_100_are_ignored():
    logits = torch.randn(3, 2)
    labels = torch.tensor([1, -100, 0])
    torch.testing.assert_close(nsp_loss(logits, labels), F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    assert nsp_loss(logits, torch.full((3,), -100)).item() == 0
    batch = _batch(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long), labels)
    out = pretraining_loss(BertForPreTrainingOutput(torch.randn(3, 1, 5), logits), batch)
    assert out.nsp_count.item() == 2
    assert out.nsp_correct.item() == int((logits.argmax(-1) == labels)[[0, 2]].sum())


def test_mlm_correct_count_matches_argmax_on_random_logits():
    """The count uses `label logit >= max logit` (cheaper than argmax): the same count without ties."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 300, generator=g)
    labels = torch.randint(0, 300, (6, 5), generator=g)
    labels[::2] = logits[::2].argmax(-1)  # half the rows predicted right
    labels[:, -1] = -100
    batch = _batch(torch.ones(6, 5, dtype=torch.long), labels)
    out = pretraining_loss(BertForPreTrainingOutput(logits, torch.zeros(6, 2)), batch)
    expected = ((logits.argmax(-1) == labels) & (labels != -100)).sum()
    assert out.mlm_correct.item() == expected.item() >= 12


def test_global_normalisers_make_micro_batch_shares_add_up_to_the_global_loss():
    """Two micro-batches normalised by the global counts sum to the loss of the batch they make together."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 11, generator=g)
    labels = torch.randint(0, 11, (4, 3), generator=g)
    labels[0, 2] = labels[3, 1:] = -100
    nsp_logits = torch.randn(4, 2, generator=g)
    nsp = torch.tensor([0, -100, 1, 1])
    positions = torch.ones(4, 3, dtype=torch.long)
    whole = pretraining_loss(BertForPreTrainingOutput(logits, nsp_logits), _batch(positions, labels, nsp))
    masked, sequences = float((labels != -100).sum()), float((nsp != -100).sum())
    shares = [
        pretraining_loss(
            BertForPreTrainingOutput(logits[part], nsp_logits[part]),
            _batch(positions[part], labels[part], nsp[part]),
            mlm_normalizer=masked,
            nsp_normalizer=sequences,
        )
        for part in (slice(0, 1), slice(1, 4))  # unequal micro-batches: plain means would differ
    ]
    torch.testing.assert_close(shares[0].mlm_loss + shares[1].mlm_loss, whole.mlm_loss)
    torch.testing.assert_close(shares[0].nsp_loss + shares[1].nsp_loss, whole.nsp_loss)
    mean_of_means = (shares[0].mlm_loss * masked / 2 + shares[1].mlm_loss * masked / 7) / 2
    assert not torch.isclose(mean_of_means, whole.mlm_loss)
