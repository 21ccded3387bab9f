"""The logistic regression with a prior on the decision's coefficient (models/logistic_prior.py) and its spec key."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from features.spec import SpecError, parse_spec
from models.logistic_prior import PriorLogisticRegression, log_odds_shift


def _data(rows: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.random(rows) < 0.3, rng.normal(size=(rows, 4))]).astype(float)
    logit = -2.5 + 1.1 * X[:, 0] + X[:, 1:] @ np.array([0.8, -0.5, 0.0, 0.3])
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y, rng.uniform(0.5, 2.0, rows)


@pytest.mark.parametrize("weighted", [False, True])
def test_without_a_prior_it_fits_what_sklearns_logistic_regression_fits(weighted):
    X, y, weights = _data()
    sample_weight = weights if weighted else None
    reference = LogisticRegression(C=0.5, max_iter=1000).fit(X, y, sample_weight=sample_weight)
    ours = PriorLogisticRegression(C=0.5).fit(X, y, sample_weight=sample_weight)
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=2e-3)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=2e-3)
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), atol=1e-3)
    np.testing.assert_array_equal(ours.classes_, reference.classes_)


def test_the_prior_holds_the_first_coefficient_as_firmly_as_its_sd_says():
    X, y, _ = _data(rows=400)
    loose = PriorLogisticRegression(prior_mean=3.0, prior_sd=100.0).fit(X, y).coef_[0]
    firm = PriorLogisticRegression(prior_mean=3.0, prior_sd=0.01).fit(X, y).coef_[0]
    assert abs(firm[0] - 3.0) < 0.01 < abs(loose[0] - 3.0)
    assert firm[0] > loose[0]


def test_bad_inputs_are_refused_with_the_problem_named():
    X, y, _ = _data(rows=50)
    with pytest.raises(ValueError, match="two classes"):
        PriorLogisticRegression().fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="prior_sd must be positive"):
        PriorLogisticRegression(prior_sd=0.0).fit(X, y)
    with pytest.raises(ValueError, match=re.escape("action_effect must be in [0, 1)")):
        log_odds_shift(1.0)
    assert log_odds_shift(0.65) == pytest.approx(np.log(1 / 0.35))


def test_the_spec_key_is_refused_where_there_is_no_decision_coefficient_or_no_action_effect(tmp_path, specs):
    leads = specs["lead_scoring"].source_text
    assert "decision_effect_prior_sd" in leads
    boosting = leads.replace('estimator = "logistic"', 'estimator = "gradient_boosting"', 1)
    with pytest.raises(SpecError, match='decision_effect_prior_sd needs decision_aware = true and estimator = "logistic"'):
        parse_spec(boosting, tmp_path / "boosting.toml")
    negative = re.sub(r"decision_effect_prior_sd = [0-9.]+", "decision_effect_prior_sd = -1", leads)
    with pytest.raises(SpecError, match="decision_effect_prior_sd must be a positive number"):
        parse_spec(negative, tmp_path / "negative.toml")
    certain = re.sub(r"action_effect = [0-9.]+", "action_effect = 1.0", leads)
    with pytest.raises(SpecError, match="0 <= action_effect < 1"):
        parse_spec(certain, tmp_path / "certain.toml")
