"""Off-policy evaluation on a constructed world whose outcome probabilities per (features, decision) are known.

The logging policy is "meeting iff x >= 0.5" with exploration (share 0.2 within 0.2 of the
threshold), so its propensities are known exactly. A *different* target policy's true value is
computed from the world's probabilities, never from the code under test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from features.spec import Exploration, Feature, Objective
from models import ope
from models.bootstrap import Blocks
from models.exploration import positive_probability

WEEKS, PER_WEEK = 8, 2500
LOG_THRESHOLD = 0.5


@pytest.fixture(scope="module")
def spec(specs):
    return dataclasses.replace(
        specs["lead_scoring"], features=(Feature("x", "numeric"),),
        objective=Objective(kind="expected_value", value_per_conversion=1000.0, cost_per_action=150.0),
        exploration=Exploration(share=0.2, band=0.2, seed=5))


def p_outcome(x: np.ndarray, positive: np.ndarray, week_effect: np.ndarray | float = 0.0) -> np.ndarray:
    """The world: a meeting lifts conversion strongly, more so for high x."""
    return np.clip(np.where(positive, 0.1 + 0.6 * x, 0.05 + 0.15 * x) + week_effect, 0.0, 1.0)


def world(spec, seed: int = 0, week_sd: float = 0.0) -> tuple[pl.DataFrame, np.ndarray]:
    """Logged rows and the per-week outcome shift (0 unless ``week_sd``)."""
    rng = np.random.default_rng(seed)
    n = WEEKS * PER_WEEK
    x = rng.random(n)
    week = np.repeat(np.arange(WEEKS), PER_WEEK)
    shift = rng.normal(0.0, week_sd, WEEKS)[week]
    p_log = positive_probability(x, LOG_THRESHOLD, spec)
    positive = rng.random(n) < p_log
    label = rng.random(n) < p_outcome(x, positive, shift)
    frame = pl.DataFrame({
        "x": x, "week": [f"2026-W{w + 10:02d}" for w in week], "entity_id": [f"e{i}" for i in range(n)],
        "decision": np.where(positive, spec.positive_decision, spec.negative_decision),
        "propensity": np.where(positive, p_log, 1.0 - p_log), "label": label.astype(np.int8),
    })
    return frame, shift


def true_value(spec, x: np.ndarray, threshold: float, shift: np.ndarray | float = 0.0) -> float:
    """Expected value per decision of "meeting iff x >= threshold (with the spec's exploration)" on these rows."""
    pi = positive_probability(x, threshold, spec)
    o = spec.objective
    v_pos = o.value_per_conversion * p_outcome(x, np.ones_like(x, bool), shift) - o.cost_per_action
    v_neg = o.value_per_conversion * p_outcome(x, np.zeros_like(x, bool), shift)
    return float(np.mean(pi * v_pos + (1 - pi) * v_neg))


@pytest.fixture(scope="module")
def logged_world(spec):
    frame, _ = world(spec)
    return frame, ope.logged_rows(frame, spec)


@pytest.mark.parametrize("method", ["snips", "dr"])
def test_estimators_recover_the_true_value_of_another_policy_within_a_useful_interval(spec, logged_world, method):
    frame, logged = logged_world
    x = frame["x"].to_numpy()
    target = 0.4                                     # inside the explored band of the logging policy
    truth = true_value(spec, x, target)
    logging_value = true_value(spec, x, LOG_THRESHOLD)
    assert abs(truth - logging_value) > 5, "the target must differ from the logging policy for the test to mean anything"
    result = ope.estimate(logged, positive_probability(x, target, spec), method)
    assert result.low <= truth <= result.high, (result, truth)
    assert result.high - result.low < 0.15 * abs(truth)
    assert result.method == method and result.blocks == "week" and result.rows == frame.height
    # The naive average of the logged rewards estimates the *logging* policy, not the target.
    assert result.low <= result.estimate <= result.high


def test_null_propensities_are_excluded_and_counted(spec):
    frame, _ = world(spec, seed=3)
    unknown = frame.with_columns(pl.when(pl.col("week") == "2026-W10").then(None).otherwise(pl.col("propensity"))
                                 .alias("propensity"))
    logged = ope.logged_rows(unknown, spec)
    x = frame["x"].to_numpy()
    result = ope.estimate(logged, positive_probability(x, 0.45, spec), "snips")
    assert result.unknown_rows == PER_WEEK and result.rows == frame.height - PER_WEEK


def test_coverage_and_ess_drop_when_the_target_leaves_the_explored_band(spec, logged_world):
    frame, logged = logged_world
    x = frame["x"].to_numpy()
    near = ope.estimate(logged, positive_probability(x, 0.45, spec), "dr")
    far = ope.estimate(logged, positive_probability(x, 0.85, spec), "dr")
    same = ope.estimate(logged, positive_probability(x, LOG_THRESHOLD, spec), "dr")
    # Far target: on x in [0.7, 0.85) the logs hold only meetings, the target wants none there.
    uncovered_share = float(np.mean((x >= 0.7) & (x < 0.85 - 0.2)))
    assert far.coverage < 1 - 0.9 * uncovered_share
    assert near.coverage > 0.97
    assert same.coverage == pytest.approx(1.0) and same.ess == pytest.approx(frame.height)
    assert far.ess < near.ess < same.ess


def _memorising_model():
    """1-nearest-neighbour on the features only (drops the decision column): in sample it returns each row's own
    outcome, out of sample it ignores what the decision does."""
    return make_pipeline(FunctionTransformer(lambda m: m[:, :-1]), KNeighborsClassifier(n_neighbors=1))


def test_cross_fitting_keeps_doubly_robust_honest_when_the_outcome_model_memorises(spec, logged_world):
    frame, _ = logged_world
    x = frame["x"].to_numpy()
    # A greedy target (no exploration of its own) inside the logs' support: coverage 1, so DR's
    # correction term alone can repair an outcome model that ignores the decision.
    greedy = dataclasses.replace(spec, exploration=Exploration())
    p_target = positive_probability(x, 0.4, greedy)
    truth = true_value(greedy, x, 0.4)
    crossed = ope.estimate(ope.logged_rows(frame, spec, model_factory=_memorising_model), p_target, "dr")
    in_sample = ope.estimate(ope.logged_rows(frame, spec, model_factory=_memorising_model, cross_fit=False), p_target, "dr")
    assert crossed.low <= truth <= crossed.high
    # Without cross-fitting every residual is 0: DR collapses to the memorised direct method, which
    # credits each row with its own logged outcome whatever the target decides.
    assert not in_sample.low <= truth <= in_sample.high
    assert abs(in_sample.estimate - truth) > 3 * abs(crossed.estimate - truth)


def test_week_blocks_give_wider_intervals_than_rows_when_weeks_are_correlated(spec):
    frame, _ = world(spec, seed=1, week_sd=0.08)
    x = frame["x"].to_numpy()
    p_target = positive_probability(x, 0.4, spec)
    by_week = ope.estimate(ope.logged_rows(frame, spec), p_target, "snips")
    rows = Blocks(np.arange(frame.height), frame.height, "row")
    by_row = ope.estimate(ope.logged_rows(frame, spec, blocks=rows), p_target, "snips")
    assert by_week.blocks == "week" and by_row.blocks == "row"
    assert (by_week.high - by_week.low) > 1.5 * (by_row.high - by_row.low)
    assert by_week.estimate == pytest.approx(by_row.estimate)


def test_paired_value_difference_sees_a_real_gain_and_is_centred_on_zero_for_the_same_policy(spec, logged_world):
    frame, logged = logged_world
    x = frame["x"].to_numpy()
    better, worse = 0.35, 0.65
    truth = true_value(spec, x, better) - true_value(spec, x, worse)
    diff = ope.value_difference(logged, positive_probability(x, better, spec), positive_probability(x, worse, spec))
    assert diff.low <= truth <= diff.high and diff.low > 0
    same = ope.value_difference(logged, positive_probability(x, 0.5, spec), positive_probability(x, 0.5, spec))
    assert same.difference == 0 and same.low == 0 and same.high == 0


def test_realised_value_follows_the_objective(specs):
    leads, replies = specs["lead_scoring"].objective, specs["reply_acceptance"].objective
    labels, positive = np.array([1, 0, 1, 0]), np.array([1, 1, 0, 0])
    assert list(ope.realised_value(labels, positive, leads)) == [
        leads.value_per_conversion - leads.cost_per_action, -leads.cost_per_action, leads.value_per_conversion, 0.0]
    assert list(ope.realised_value(labels, positive, replies)) == [replies.value_per_action, -replies.cost_per_failure, 0, 0]


def test_older_logs_make_the_doubly_robust_outcome_model_more_accurate(spec):
    # A test slice of a few hundred rows with little exploration (as for the lead model): the default q̂
    # fit on its other folds alone has seen few explored rows; the weeks before the slice hold many
    # more. The target leaves the explored band on part of the rows, where DR relies on q̂ alone.
    # Measured over worlds as the mean absolute error against the true value.
    sparse = dataclasses.replace(spec, exploration=Exploration(share=0.05, band=0.2, seed=5))
    target, slice_rows, older_rows = 0.2, 600, 4000
    alone, helped = [], []
    for seed in range(6):
        frame, _ = world(sparse, seed=seed)
        older, evaluated = frame.slice(frame.height - slice_rows - older_rows, older_rows), frame.tail(slice_rows)
        x = evaluated["x"].to_numpy()
        truth = true_value(sparse, x, target)
        p_target = positive_probability(x, target, sparse)
        rows = Blocks(np.arange(slice_rows), slice_rows, "row")
        for errors, extra in ((alone, None), (helped, older)):
            logged = ope.logged_rows(evaluated, sparse, blocks=rows, outcome_rows=extra)
            errors.append(abs(ope.estimate(logged, p_target, "dr", resamples=50).estimate - truth))
    assert np.mean(helped) < 0.75 * np.mean(alone), (np.mean(helped), np.mean(alone))


def test_older_logs_never_let_the_outcome_model_see_the_rows_it_predicts(spec, logged_world):
    # The memorising q̂ of the cross-fitting test, now also fit on other logs: the evaluated rows'
    # own outcomes still never reach the q̂ that predicts them, so DR stays honest.
    frame, _ = logged_world
    older, _ = world(spec, seed=7)
    x = frame["x"].to_numpy()
    greedy = dataclasses.replace(spec, exploration=Exploration())
    p_target = positive_probability(x, 0.4, greedy)
    truth = true_value(greedy, x, 0.4)
    logged = ope.logged_rows(frame, spec, model_factory=_memorising_model, outcome_rows=older)
    result = ope.estimate(logged, p_target, "dr")
    assert result.low <= truth <= result.high
    assert logged.q_positive.size == frame.height      # only the evaluated rows are predicted


def test_doubly_robust_intervals_hold_the_truth_when_conversions_are_rare_and_few_rows_explored(spec):
    # The gate's situation on leads: one week of logs with 5 % exploration, conversions of a few percent,
    # each explored row weighted 20x. A week that happens to see fewer explored conversions than expected
    # gives a low estimate *and* a narrow percentile interval; the model-based spread does not shrink with
    # that luck. Over many such weeks the 95 % intervals of the paired difference must hold the truth
    # about 95 % of the time (the bootstrap's percentile intervals alone: 65 % here).
    from sklearn.linear_model import LogisticRegression

    leads = dataclasses.replace(spec, objective=Objective(kind="expected_value", value_per_conversion=2500.0,
                                                          cost_per_action=150.0),
                                exploration=Exploration(share=0.05, band=0.2, seed=5))
    champion, challenger, week_rows, older_rows = 0.5, 0.4, 600, 4000

    def p_convert(x: np.ndarray, meeting: np.ndarray) -> np.ndarray:
        return (0.02 + 0.15 * x) * np.where(meeting, 1.0, 0.35)

    def value(x: np.ndarray, threshold: float) -> float:
        pi = positive_probability(x, threshold, leads)
        meeting = 2500.0 * p_convert(x, np.ones_like(x, bool)) - 150.0
        nurture = 2500.0 * p_convert(x, np.zeros_like(x, bool))
        return float(np.mean(pi * meeting + (1 - pi) * nurture))

    held = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        x = rng.random(week_rows + older_rows)
        ids = [f"s{seed}-e{i}" for i in range(x.size)]
        p_log = positive_probability(x, champion, leads)
        meeting = rng.random(x.size) < p_log
        frame = pl.DataFrame({"x": x, "entity_id": ids,
                              "decision": np.where(meeting, leads.positive_decision, leads.negative_decision),
                              "propensity": np.where(meeting, p_log, 1.0 - p_log),
                              "label": (rng.random(x.size) < p_convert(x, meeting)).astype(np.int8)})
        older, week = frame.head(older_rows), frame.tail(week_rows)
        x_week = week["x"].to_numpy()
        logged = ope.logged_rows(week, leads, model_factory=lambda: LogisticRegression(C=10.0), outcome_rows=older)
        diff = ope.value_difference(logged, positive_probability(x_week, challenger, leads),
                                    positive_probability(x_week, champion, leads), resamples=400, seed=seed)
        held.append(diff.low <= value(x_week, challenger) - value(x_week, champion) <= diff.high)
    assert np.mean(held) >= 0.92, np.mean(held)
