"""GLUE metrics against values computed by hand (numpy only, no scipy/sklearn)."""

from __future__ import annotations

import numpy as np
import pytest

from bert.glue_metrics import accuracy, compute_metrics, f1, matthews, pearson, spearman

PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 1, 1]  # tp 2, fp 1, fn 1, tn 1


def test_accuracy_and_f1_by_hand():
    assert accuracy(PRED, GOLD) == pytest.approx(3 / 5)
    assert f1(PRED, GOLD) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: defined as 0, not a division by zero


def test_matthews_binary_and_multiclass():
    # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert matthews(PRED, GOLD) == pytest.approx(1 / 6)
    # 3 classes: confusion rows (true) [2,0,0] [0,0,1] [0,0,1]; (c n - t.p) / sqrt((n^2 - p.p)(n^2 - t.t))
    assert matthews([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / np.sqrt(8 * 10))
    assert matthews([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction: undefined, reported as 0
    assert matthews(GOLD, GOLD) == pytest.approx(1.0)


def test_pearson_by_hand():
    # dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]: sum dx dy = 5, sxx = 2, syy = 114 / 9
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_spearman_averages_tied_ranks():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman([10, 20, 30], [0.1, 5, 7]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_compute_metrics_by_name():
    out = compute_metrics(["accuracy", "f1"], np.array(PRED), np.array(GOLD))
    assert out == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        compute_metrics(["auc"], np.array(PRED), np.array(GOLD))
