"""Threshold selection on constructed data whose best threshold is known in closed form."""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

from models.thresholds import SegmentThresholds, choose_threshold


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
    # The point estimate (acceptance_confidence 0): the rule before lower bounds.
    objective = dataclasses.replace(specs["reply_acceptance"].objective, acceptance_confidence=0.0)   # target 0.95
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


def _wilson_low(p: float, n: int, confidence: float) -> float:
    """Textbook one-sided Wilson score lower bound (the reference the implementation is checked against)."""
    z = NormalDist().inv_cdf(confidence)
    return (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def test_with_a_confidence_level_the_wilson_lower_bound_must_reach_the_target(specs):
    objective = specs["reply_acceptance"].objective
    assert objective.acceptance_confidence == 0.95
    scores, labels = _calibrated_levels()
    choice = choose_threshold(scores, labels, objective, weeks=1)
    # Rows at or above level k: (101 - k) * 1000 of them, mean acceptance (k/100 + 1) / 2.
    k = round(choice.threshold * 100)
    assert _wilson_low((k / 100 + 1) / 2, (101 - k) * 1000, 0.95) >= objective.target_acceptance
    assert _wilson_low(((k - 1) / 100 + 1) / 2, (102 - k) * 1000, 0.95) < objective.target_acceptance
    assert choice.threshold > 0.90       # stricter than the point estimate on the same rows
    assert "Wilson 95% lower bound" in choice.reason


def test_a_wilson_threshold_holds_out_of_sample_where_the_point_estimate_fails(specs):
    """Scores uniform on [0.6, 1] and calibrated: acceptance above t is (t + 1) / 2 on any new rows, so a
    threshold meets the 95 % target out of sample exactly when t >= 0.9. Chosen on 2,000 labelled rows,
    the point estimate picks the lowest t that happens to reach 95 % on those rows and falls short about
    half the time; the Wilson bound (95 %) about one time in twenty."""
    point = dataclasses.replace(specs["reply_acceptance"].objective, acceptance_confidence=0.0)
    wilson = dataclasses.replace(point, acceptance_confidence=0.95)
    trials, failures = 200, {"point": 0, "wilson": 0}
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        scores = np.round(rng.uniform(0.6, 1.0, 2000), 3)
        labels = (rng.random(scores.size) < scores).astype(int)
        for name, objective in (("point", point), ("wilson", wilson)):
            t = choose_threshold(scores, labels, objective, weeks=1).threshold
            failures[name] += (t + 1) / 2 < objective.target_acceptance
    assert failures["point"] / trials > 0.3
    assert failures["wilson"] / trials <= 0.08
    assert failures["wilson"] < failures["point"] / 4


def test_graded_labels_count_as_their_grade(specs):
    """Grades (edited drafts: the share kept) enter the acceptance as they are: 0.5 counts half."""
    objective = dataclasses.replace(specs["reply_acceptance"].objective, acceptance_confidence=0.0, min_auto_sent=1)
    scores = np.repeat([0.99, 0.9, 0.8], 100)
    grades = np.r_[np.ones(100), np.full(100, 0.9), np.full(100, 0.5)]
    # Mean grade above 0.9: 0.95, above 0.8: 0.8; as binary labels (a grade < 1 as failure) it would be 0.5.
    assert choose_threshold(scores, grades, objective, weeks=1).threshold == pytest.approx(0.9)


def test_segment_thresholds_apply_per_row_with_a_default():
    thresholds = SegmentThresholds(0.9, "intent", {"complaint": 0.98, "order_status": 0.8})
    frame = pl.DataFrame({"intent": ["complaint", "order_status", "invoice_question", None]})
    assert thresholds.for_rows(frame).tolist() == [0.98, 0.8, 0.9, 0.9]
    assert SegmentThresholds.from_json(thresholds.to_json()) == thresholds
    assert SegmentThresholds(0.7).for_rows(frame).tolist() == [0.7] * 4
