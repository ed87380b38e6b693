"""Metrics of the GLUE sentence-pair tasks, in plain numpy (no scipy or sklearn).

accuracy, binary F1 (positive class 1, as GLUE scores MRPC and QQP), Matthews correlation, Pearson and
Spearman correlation (ties get their average rank). `compute_metrics` applies a task's list of metric names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")
"""Metric names a task may list; every value is a fraction or a correlation (not a percentage)."""


def accuracy(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their label."""
    p, y = np.asarray(predictions), np.asarray(labels)
    return float((p == y).mean()) if y.size else 0.0


def f1(
    predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, positive: int = 1
) -> float:
    """Binary F1 of the `positive` class; 0 when it is never predicted nor present."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp = float(np.sum(p & y))
    denominator = float(p.sum() + y.sum())
    return 2.0 * tp / denominator if denominator else 0.0


def matthews(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin); 0 when undefined."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(p, y)
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)  # (true, predicted)
    np.add.at(confusion, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1.0)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted counts per class
    n, correct = confusion.sum(), np.trace(confusion)
    denominator = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float((correct * n - t @ q) / denominator) if denominator else 0.0


def pearson(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float((x @ y) / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]  # exclusive
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return pearson(_average_ranks(x), _average_ranks(y))


_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute_metrics(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each named metric of `predictions` (class ids, or scores for regression) against `labels`."""
    unknown = [n for n in names if n not in _FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")
    return {name: _FUNCTIONS[name](predictions, labels) for name in names}
