"""Threshold selection on constructed data whose best threshold is known in closed form."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.thresholds import choose_threshold


def _calibrated_levels(per_level: int = 1000):
    """Scores k/100 (k = 1..100), each level with exactly round(k/100 * n) positives: perfectly calibrated."""
    scores, labels = [], []
    for k in range(1, 101):
        p = k / 100
        hits = round(p * per_level)
        scores += [p] * per_level
        labels += [1] * hits + [0] * (per_level - hits)
    return np.array(scores), np.array(labels)


def test_expected_value_threshold_is_the_break_even_probability(specs):
    objective = specs["lead_scoring"].objective
    scores, labels = _calibrated_levels()
    # A meeting pays when p * value * effect > cost; the lowest such level is the best threshold.
    break_even = objective.cost_per_action / (objective.value_per_conversion * objective.action_effect)
    expected = min(k / 100 for k in range(1, 101) if k / 100 > break_even)
    choice = choose_threshold(scores, labels, objective, weeks=1)
    assert choice.threshold == pytest.approx(expected)
    assert choice.objective_value > 0


def test_capacity_limits_the_positive_decisions(specs):
    objective = dataclasses.replace(specs["lead_scoring"].objective, weekly_capacity=5000)
    scores, labels = _calibrated_levels()
    choice = choose_threshold(scores, labels, objective, weeks=1)
    assert choice.threshold == pytest.approx(0.96)    # the top five levels hold exactly 5,000 rows
    assert choice.positive_share == pytest.approx(5000 / scores.size)


def test_precision_target_threshold_is_the_lowest_that_keeps_the_target(specs):
    objective = specs["reply_acceptance"].objective   # target acceptance 0.95
    scores, labels = _calibrated_levels()
    # Rows at or above level k have mean acceptance (k/100 + 1) / 2, which reaches 0.95 at k = 90.
    choice = choose_threshold(scores, labels, objective, weeks=1)
    assert choice.threshold == pytest.approx(0.90)
    above = labels[scores >= choice.threshold]
    assert above.mean() >= objective.target_acceptance
    assert labels[scores >= 0.89].mean() < objective.target_acceptance


def test_no_threshold_pays_means_no_positive_decision(specs):
    objective = specs["lead_scoring"].objective
    scores = np.linspace(0.001, 0.05, 500)
    labels = np.zeros(500, dtype=int)
    choice = choose_threshold(scores, labels, objective, weeks=1)
    assert choice.positive_share == 0.0 and choice.threshold == 1.0
