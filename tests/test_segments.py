"""Per-segment calibration with partial pooling and per-segment thresholds, on constructed worlds whose
true acceptance per segment is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from models.segments import (
    fit_logistic_recalibration,
    fit_segment_calibration,
    logit,
    segmented_thresholds,
    sigmoid,
)

# The global score is right on average, but within intents it is not: order-status drafts are better than
# their score says, complaints worse (logit shifts). Returns are too few for a calibration of their own.
SHIFT = {"order_status": 0.5, "complaint": -0.6, "return": 0.0}
SIZES = {"order_status": 3000, "complaint": 2000, "return": 150}


def _draw(rng: np.random.Generator, sizes: dict[str, int]) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Rows with `intent`, their global score and their true acceptance probability."""
    intent = np.concatenate([[k] * n for k, n in sizes.items()])
    score = sigmoid(rng.normal(2.6, 1.1, intent.size))
    truth = sigmoid(logit(score) + np.array([SHIFT[k] for k in intent]))
    return pl.DataFrame({"intent": intent}), score, truth


@pytest.fixture
def spec(specs):
    reply = specs["reply_acceptance"]
    assert reply.segments.column == "intent" and reply.objective.acceptance_confidence == 0.95
    return reply


def test_logistic_recalibration_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    scores = sigmoid(rng.normal(0.5, 1.5, 40_000))
    labels = (rng.random(scores.size) < sigmoid(-0.5 + 1.3 * logit(scores))).astype(float)
    a, b = fit_logistic_recalibration(scores, labels)
    assert a == pytest.approx(-0.5, abs=0.06) and b == pytest.approx(1.3, abs=0.06)
    # Grades in [0, 1] work the same: their expectation is what is fitted.
    graded = np.where(labels == 1, 1.0, rng.uniform(0, 0.2, scores.size))
    a2, b2 = fit_logistic_recalibration(scores, graded)
    assert sigmoid(a2 + b2 * logit(0.5)) > sigmoid(a + b * logit(0.5))


def test_few_rows_are_shrunk_towards_the_global_calibration(spec):
    rng = np.random.default_rng(1)
    frame, scores, truth = _draw(rng, {"order_status": 4000, "complaint": 400, "return": 150})
    grades = (rng.random(scores.size) < truth).astype(float)
    k = spec.segments.prior_rows
    calibration = fit_segment_calibration(scores, grades, frame["intent"], spec.segments.min_rows, k)
    assert set(calibration.coefficients) == {"order_status", "complaint"}         # return: below min_rows
    assert calibration.weights["order_status"] == pytest.approx(4000 / (4000 + k))
    assert calibration.weights["complaint"] == pytest.approx(400 / (400 + k))
    # The pooled coefficients lie between the segment's own fit and the identity (0, 1), at the pooling weight.
    own = fit_logistic_recalibration(scores[4000:4400], grades[4000:4400])
    w = calibration.weights["complaint"]
    assert calibration.coefficients["complaint"] == pytest.approx((w * own[0], w * own[1] + 1 - w))
    # A return keeps the global score exactly.
    returns = frame["intent"] == "return"
    np.testing.assert_array_equal(calibration.apply(scores, frame["intent"])[returns.to_numpy()],
                                  scores[returns.to_numpy()])


def test_complaints_need_a_higher_score_and_every_segment_meets_the_target_out_of_sample(spec):
    """Chosen on one calibration slice, checked on the true acceptance of many new rows per intent; five worlds."""
    target = spec.objective.target_acceptance
    complaints_sent = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        frame, scores, truth = _draw(rng, SIZES)
        grades = (rng.random(scores.size) < truth).astype(float)
        _, choice = segmented_thresholds(scores, grades, frame, spec, weeks=1)
        thresholds = choice.thresholds
        assert thresholds.column == "intent" and set(thresholds.by_segment) == {"order_status", "complaint"}
        assert thresholds.by_segment["complaint"] > thresholds.by_segment["order_status"]

        new, new_scores, new_truth = _draw(np.random.default_rng(100 + seed), {k: 100_000 for k in SIZES})
        sent = choice.calibration.apply(new_scores, new["intent"]) >= thresholds.for_rows(new)
        acceptance = (pl.DataFrame({"intent": new["intent"], "truth": new_truth, "sent": sent}).filter("sent")
                      .group_by("intent").agg(pl.col("truth").mean(), pl.len()))
        by_intent = dict(zip(acceptance["intent"], acceptance["truth"], strict=True))
        sends = dict(zip(acceptance["intent"], acceptance["len"], strict=True))
        for intent in ("order_status", "complaint"):
            assert by_intent.get(intent, 1.0) >= target, (seed, intent, by_intent)
        assert sends["order_status"] > 2 * sends.get("complaint", 0)
        complaints_sent += sends.get("complaint", 0) > 0

        # One global threshold on the same slice meets the target over all rows and misses it for complaints.
        plain = dataclasses.replace(spec, segments=dataclasses.replace(spec.segments, column=""))
        _, single = segmented_thresholds(scores, grades, frame, plain, weeks=1)
        one = new_scores >= single.thresholds.default
        complaint = (new["intent"] == "complaint").to_numpy()
        assert new_truth[one].mean() >= target
        assert new_truth[one & complaint].mean() < target
    assert complaints_sent >= 3          # complaints are auto-sent, only at a higher score


def test_segments_without_their_own_threshold_still_meet_the_target(spec):
    """Complaints too few for a calibration of their own decide by the default threshold: it must hold for them
    too, not only on all rows (where order-status questions carry them)."""
    target = spec.objective.target_acceptance
    sizes = {"order_status": 3000, "complaint": 250, "return": 1500}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        frame, scores, truth = _draw(rng, sizes)
        grades = (rng.random(scores.size) < truth).astype(float)
        _, choice = segmented_thresholds(scores, grades, frame, spec, weeks=1)
        assert "complaint" not in choice.thresholds.by_segment
        new, new_scores, new_truth = _draw(np.random.default_rng(200 + seed), {k: 100_000 for k in sizes})
        sent = choice.calibration.apply(new_scores, new["intent"]) >= choice.thresholds.for_rows(new)
        complaint = (new["intent"] == "complaint").to_numpy()
        assert not (sent & complaint).any() or new_truth[sent & complaint].mean() >= target, seed
        # On all rows alone the default would let complaints through below the target.
        every = segmented_thresholds(scores, grades, frame.with_columns(pl.lit("any").alias("intent")),
                                     dataclasses.replace(spec, segments=dataclasses.replace(spec.segments, min_rows=10**6)),
                                     weeks=1)[1].thresholds.default
        loose = (new_scores >= every) & complaint
        assert loose.any() and new_truth[loose].mean() < target
