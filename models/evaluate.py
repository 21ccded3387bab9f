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


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
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
