"""Pretraining eval metrics on a hand-made batch, and the data sampler's sharding (bert/metrics.py, bert/sampler.py)."""

import math

import pytest
import torch

from bert.metrics import MetricTotals, example_stats
from bert.sampler import ShardedBatchSampler


def test_eval_metrics_on_a_hand_made_batch():
    v = 4
    big = 10.0
    # Row 0: two masked slots, predicted 1 (right) and 2 (wrong, label 3); row 1: one slot, right, then padding.
    logits = torch.zeros(2, 2, v)
    logits[0, 0, 1] = big
    logits[0, 1, 2] = big
    logits[1, 0, 0] = big
    labels = torch.tensor([[1, 3], [0, -100]])
    nsp_logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    nsp_labels = torch.tensor([0, 1])  # first right, second wrong
    stats = example_stats(logits, labels, nsp_logits, nsp_labels)
    totals = MetricTotals()
    totals.add(stats)
    result = totals.result()

    right = -math.log(math.exp(big) / (math.exp(big) + v - 1))
    wrong = -math.log(1 / (math.exp(big) + v - 1))
    assert result["mlm_accuracy"] == pytest.approx(2 / 3)
    assert result["mlm_loss"] == pytest.approx((2 * right + wrong) / 3, rel=1e-5)  # over tokens, not rows
    assert result["mlm_perplexity"] == pytest.approx(math.exp(result["mlm_loss"]), rel=1e-6)
    nsp_right = -math.log(math.exp(2) / (math.exp(2) + 1))
    nsp_wrong = -math.log(1 / (math.exp(2) + 1))
    assert result["nsp_accuracy"] == pytest.approx(0.5)
    assert result["nsp_loss"] == pytest.approx((nsp_right + nsp_wrong) / 2, rel=1e-5)


def test_metrics_sum_over_batches_not_average_of_averages():
    logits = torch.zeros(1, 3, 2)
    logits[0, :, 0] = 5.0
    totals = MetricTotals()
    totals.add(example_stats(logits, torch.tensor([[0, 0, 0]])))  # 3 right
    totals.add(example_stats(logits[:, :1], torch.tensor([[1]])))  # 1 wrong
    assert totals.result()["mlm_accuracy"] == pytest.approx(3 / 4)


def _take(sampler, n):
    out, it = [], iter(sampler)
    for _ in range(n):
        out.append(next(it))
    return out


def test_sampler_shards_are_disjoint_and_match_one_process():
    one = _take(ShardedBatchSampler(50, 8, 1, 0, seed=3), 6)
    r0 = _take(ShardedBatchSampler(50, 4, 2, 0, seed=3), 6)
    r1 = _take(ShardedBatchSampler(50, 4, 2, 1, seed=3), 6)
    for j in range(6):
        assert not set(r0[j]) & set(r1[j])
        assert r0[j] + r1[j] == one[j]


def test_sampler_epochs_cover_each_example_once_and_resume_at_a_position():
    sampler = ShardedBatchSampler(20, 3, 1, 0, seed=1)  # 6 batches per epoch, 2 examples dropped
    assert sampler.batches_per_epoch == 6
    stream = _take(sampler, 14)
    first_epoch = [i for b in stream[:6] for e, i in b]
    assert len(set(first_epoch)) == 18 and all(e == 0 for b in stream[:6] for e, _ in b)
    assert {e for e, _ in stream[6]} == {1}
    assert stream[6] != stream[0]  # a new permutation each epoch
    epoch, index = 0, 0
    for _ in range(10):
        epoch, index = sampler.advance(epoch, index)
    assert (epoch, index) == (1, 4)
    resumed = _take(ShardedBatchSampler(20, 3, 1, 0, seed=1, epoch=epoch, start=index), 4)
    assert resumed == stream[10:14]
