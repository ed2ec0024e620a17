"""Classification metrics as pure functions of predicted and true labels."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``.

    This is scikit-learn's ``f1_score(average="macro")`` convention; a class with no
    true and no predicted example is left out, and F1 is 0 where precision+recall is 0.
    Non-negative integer labels (every model here) are counted with ``np.bincount``; other labels go through
    ``np.union1d``, which imports ``numpy.ma`` (5-12 ms, once, at a run's first evaluation). Both give the same
    per-class scores in the same order, so the same mean to the bit.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    if y_true.dtype.kind in "iu" and y_pred.dtype.kind in "iu" and min(y_true.min(), y_pred.min()) >= 0:
        size = int(max(y_true.max(), y_pred.max())) + 1
        tp = np.bincount(y_true[y_true == y_pred], minlength=size)
        true_count, pred_count = np.bincount(y_true, minlength=size), np.bincount(y_pred, minlength=size)
        present = (true_count + pred_count) > 0  # the classes union1d would list, in the same ascending order
        tp, true_count, pred_count = tp[present], true_count[present], pred_count[present]
        denominator = true_count + pred_count  # 2 tp + fp + fn
        scores = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
        return float(np.mean(scores))
    classes = np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        denominator = 2 * tp + fp + fn
        scores.append(0.0 if denominator == 0 else 2 * tp / denominator)
    return float(np.mean(scores))
