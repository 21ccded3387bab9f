"""Logistic regression with an informative normal prior on its first coefficient (the decision's effect).

A decision-aware lead model (models/decision_aware.py) learns what a meeting adds from the rows
where the decision was explored. Before the first model exists those come from the cold-start
rule's exploration, which flips hot and cold leads alike, at about 170 EUR each, and a first model
fit on a few dozen of them is worse than the rule. The spec's objective already states what a
meeting is believed to bring (``action_effect``, the share of a lead's conversion chance it adds);
a pooled model takes that as fixed. Here it is a prior instead: the decision's log-odds shift
starts at −ln(1 − action_effect), the shift that brings that share where conversions are rare, held
with the spec's standard deviation, and the explored rows move it as they accumulate.

The fit is the maximum a posteriori estimate: sklearn's ``LogisticRegression(C)`` objective (log
loss plus ``β² / 2C`` on every coefficient, the intercept free) with ``(β₀ − mean)² / 2 sd²`` as the
first coefficient's penalty instead. Without a prior (``prior_sd=None``) it is that objective exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)


def log_odds_shift(action_effect: float) -> float:
    """The log-odds shift of a decision that brings ``action_effect`` of a (rare) outcome's probability."""
    if not 0.0 <= action_effect < 1.0:
        raise ValueError(f"action_effect must be in [0, 1) to give a log-odds shift, not {action_effect}")
    return float(-np.log1p(-action_effect))


class PriorLogisticRegression(ClassifierMixin, BaseEstimator):
    """Binary L2 logistic regression; coefficient 0 has a normal prior (``prior_mean``, ``prior_sd``)."""

    def __init__(self, C: float = 1.0, prior_mean: float = 0.0, prior_sd: float | None = None, max_iter: int = 1000):
        self.C = C
        self.prior_mean = prior_mean
        self.prior_sd = prior_sd
        self.max_iter = max_iter

    def fit(self, X, y, sample_weight=None) -> PriorLogisticRegression:
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"PriorLogisticRegression needs two classes in y, got {len(self.classes_)}")
        if self.prior_sd is not None and not self.prior_sd > 0:
            raise ValueError(f"prior_sd must be positive, not {self.prior_sd}")
        target = (y == self.classes_[1]).astype(np.float64)
        weights = _check_sample_weight(sample_weight, X)
        centre = np.zeros(X.shape[1])
        precision = np.full(X.shape[1], 1.0 / self.C)
        if self.prior_sd is not None and X.shape[1]:
            centre[0], precision[0] = self.prior_mean, 1.0 / self.prior_sd ** 2

        def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
            z = X @ params[:-1] + params[-1]
            away = params[:-1] - centre
            residual = weights * (expit(z) - target)
            value = np.sum(weights * (np.logaddexp(0.0, z) - target * z)) + 0.5 * np.sum(precision * away ** 2)
            return value, np.concatenate([X.T @ residual + precision * away, [residual.sum()]])

        result = minimize(objective, np.concatenate([centre, [0.0]]), jac=True, method="L-BFGS-B",
                          options={"maxiter": self.max_iter})
        self.coef_ = result.x[None, :-1]
        self.intercept_ = result.x[-1:]
        self.n_iter_ = np.array([result.nit])
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X) -> np.ndarray:
        positive = expit(self.decision_function(X))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
