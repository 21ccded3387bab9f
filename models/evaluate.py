"""Metrics of probabilistic classifiers: ranking, accuracy of probabilities, calibration."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size."""
    labels, scores = np.asarray(labels, float), np.asarray(scores, float)
    if labels.size == 0:
        return float("nan")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    observed = np.bincount(index, weights=labels, minlength=bins)
    predicted = np.bincount(index, weights=scores, minlength=bins)
    used = counts > 0
    return float(np.sum(np.abs(observed[used] - predicted[used])) / labels.size)


def is_graded(labels: np.ndarray) -> bool:
    labels = np.asarray(labels, float)
    return bool(((labels > 0) & (labels < 1)).any())


def graded_auc(grades: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC where a grade g counts as a positive with weight g and a negative with weight 1 - g
    (the plain AUC when every grade is 0 or 1)."""
    from sklearn.metrics import roc_auc_score

    g, s = np.asarray(grades, float), np.asarray(scores, float)
    if not is_graded(g):
        g = g.astype(int)
        return float(roc_auc_score(g, s)) if g.size and g.min() != g.max() else float("nan")
    return float(roc_auc_score(np.r_[np.ones(g.size), np.zeros(g.size)], np.r_[s, s], sample_weight=np.r_[g, 1 - g]))


def _graded_metrics(grades: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The metrics for grades in [0, 1]: each row as a positive with weight g and a negative with weight 1 - g.

    Brier and log loss are then the squared error and the cross-entropy against the grade (proper scores of
    the expected grade), and the calibration error compares mean score with mean grade.
    """
    y2, s2, w2 = np.r_[np.ones(grades.size), np.zeros(grades.size)], np.r_[scores, scores], np.r_[grades, 1 - grades]
    return {
        "roc_auc": graded_auc(grades, scores),
        "average_precision": float(average_precision_score(y2, s2, sample_weight=w2)),
        "brier": float(np.mean((grades - scores) ** 2)),
        "log_loss": float(-np.mean(grades * np.log(scores) + (1 - grades) * np.log(1 - scores))),
        "calibration_error": expected_calibration_error(grades, scores),
        "positive_rate": float(grades.mean()),
        "rows": float(grades.size),
    }


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Ranking, probability accuracy and calibration. ``labels`` may be grades in [0, 1] (graded outcomes)."""
    if is_graded(labels):
        return _graded_metrics(np.asarray(labels, float), np.clip(np.asarray(scores, float), 1e-6, 1 - 1e-6))
    labels, scores = np.asarray(labels, int), np.clip(np.asarray(scores, float), 1e-6, 1 - 1e-6)
    both_classes = labels.min() != labels.max() if labels.size else False
    nan = float("nan")
    return {
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else nan,
        "average_precision": float(average_precision_score(labels, scores)) if both_classes else nan,
        "brier": float(brier_score_loss(labels, scores)) if labels.size else nan,
        "log_loss": float(log_loss(labels, scores, labels=[0, 1])) if labels.size else nan,
        "calibration_error": expected_calibration_error(labels, scores),
        "positive_rate": float(labels.mean()) if labels.size else nan,
        "rows": float(labels.size),
    }


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin: mean predicted score, observed rate, row count (for the calibration plot)."""
    labels, scores = np.asarray(labels, float), np.asarray(scores, float)
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    used = counts > 0
    predicted = np.bincount(index, weights=scores, minlength=bins)[used] / counts[used]
    observed = np.bincount(index, weights=labels, minlength=bins)[used] / counts[used]
    return predicted, observed, counts[used]
