"""Statistical promotion gates on constructed data: paired intervals, "not enough evidence", uncovered challengers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models import ope
from models.bootstrap import Blocks
from models.evaluate import expected_calibration_error
from models.exploration import positive_probability
from models.gates import (Evidence, paired_metric_differences, weekly_alpha, weighted_auc,
                          weighted_calibration_error)
from models.promotion import decide_promotion
from tests.test_ope import LOG_THRESHOLD, spec, true_value, world  # noqa: F401 - spec is a fixture

GOOD = {"roc_auc": 0.80, "brier": 0.10, "log_loss": 0.30, "calibration_error": 0.02}
CHAMPION = {"roc_auc": 0.80, "brier": 0.11, "log_loss": 0.31, "calibration_error": 0.02}


def _evidence(spec, frame, challenger_threshold: float, champion_threshold: float = LOG_THRESHOLD) -> Evidence:
    x = frame["x"].to_numpy()
    alpha = weekly_alpha(spec.gates)
    logged = ope.logged_rows(frame, spec)
    p_new, p_old = positive_probability(x, challenger_threshold, spec), positive_probability(x, champion_threshold, spec)
    return Evidence(alpha, {"dr": ope.estimate(logged, p_new, "dr", one_sided_alpha=alpha)},
                    {"dr": ope.estimate(logged, p_old, "dr", one_sided_alpha=alpha)},
                    {"value_dr": ope.value_difference(logged, p_new, p_old, "dr", one_sided_alpha=alpha)})


def test_weekly_level_is_bonferroni_over_the_horizon(specs):
    gates = specs["lead_scoring"].gates
    assert weekly_alpha(gates) == pytest.approx(gates.alpha / gates.testing_horizon_weeks)
    assert weekly_alpha(dataclasses.replace(gates, testing_horizon_weeks=10)) < weekly_alpha(gates)


def test_vectorised_weighted_metrics_match_the_reference_metrics():
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.3).astype(float)
    scores = np.round(np.clip(0.3 + 0.3 * (labels - 0.3) + rng.normal(0, 0.2, 3000), 0, 1), 2)   # rounded: ties
    ones = np.ones((1, labels.size))
    assert weighted_auc(ones, labels, scores)[0] == pytest.approx(roc_auc_score(labels, scores))
    assert weighted_calibration_error(ones, labels, scores)[0] == pytest.approx(expected_calibration_error(labels, scores))
    # A weight of 2 is the row drawn twice.
    counts = rng.integers(0, 3, labels.size)
    repeated = np.repeat(np.arange(labels.size), counts)
    assert weighted_auc(counts[None, :].astype(float), labels, scores)[0] == pytest.approx(
        roc_auc_score(labels[repeated], scores[repeated]))


def test_paired_metric_interval_resamples_the_same_weeks_for_both_models():
    rng = np.random.default_rng(1)
    n, weeks = 8000, 8
    labels = (rng.random(n) < 0.3).astype(float)
    base = labels + rng.normal(0, 0.8, n)
    champion = 1 / (1 + np.exp(-base))
    blocks = Blocks(np.repeat(np.arange(weeks), n // weeks), weeks, "week")
    same = paired_metric_differences(labels, champion, champion, blocks, 0.025, resamples=300)
    assert same["roc_auc"].low == same["roc_auc"].high == 0.0        # paired: identical models never differ
    sharper = 1 / (1 + np.exp(-(labels + rng.normal(0, 0.5, n))))
    better = paired_metric_differences(labels, sharper, champion, blocks, 0.025, resamples=300)["roc_auc"]
    assert better.difference == pytest.approx(roc_auc_score(labels, sharper) - roc_auc_score(labels, champion))
    assert better.low > 0 and better.blocks == "week"


def test_a_challenger_whose_gain_is_within_noise_keeps_the_champion_for_lack_of_evidence(spec):
    frame, _ = world(spec, seed=4)
    frame = frame.gather_every(10)          # a small comparison window: 250 rows a week over 8 weeks
    x = frame["x"].to_numpy()
    evidence = _evidence(spec, frame, challenger_threshold=0.49)
    diff = evidence.differences["value_dr"]
    assert diff.low < 0 < diff.high
    decision = decide_promotion(spec.gates, GOOD, CHAMPION, frame.height, 0.01, evidence)
    assert decision.action == "keep"
    assert decision.reasons[0].startswith("not enough evidence")
    # The same gates promote a challenger with a real gain the logs cover.
    assert true_value(spec, x, 0.4) > true_value(spec, x, LOG_THRESHOLD)
    better = _evidence(spec, frame, challenger_threshold=0.4)
    assert better.challenger_value["dr"].coverage >= spec.gates.min_coverage
    promoted = decide_promotion(spec.gates, GOOD, CHAMPION, frame.height, 0.01, better)
    assert promoted.action == "promote", promoted.reasons


def test_a_challenger_the_logs_do_not_cover_goes_to_a_person(spec):
    frame, _ = world(spec, seed=5)
    evidence = _evidence(spec, frame, challenger_threshold=0.85)     # leaves the explored band [0.3, 0.7]
    assert evidence.challenger_value["dr"].coverage < spec.gates.min_coverage
    decision = decide_promotion(spec.gates, GOOD, CHAMPION, frame.height, 0.01, evidence)
    assert decision.action == "await_approval"
    assert any("cover" in r for r in decision.reasons)
    # Too few effective rows is the same: a person decides.
    strict = dataclasses.replace(spec.gates, min_ess=10 * frame.height)
    covered = _evidence(spec, frame, challenger_threshold=0.45)
    assert decide_promotion(strict, GOOD, CHAMPION, frame.height, 0.01, covered).action == "await_approval"


def test_the_evidence_reports_every_figure_for_mlflow(spec):
    frame, _ = world(spec, seed=6)
    metrics = _evidence(spec, frame, challenger_threshold=0.45).metrics()
    for key in ("ope_dr_challenger_estimate", "ope_dr_challenger_coverage", "ope_dr_challenger_ess",
                "ope_dr_champion_low", "diff_value_dr_difference", "diff_value_dr_low", "diff_value_dr_high"):
        assert key in metrics and np.isfinite(metrics[key])


def test_the_figures_reach_the_mlflow_run_and_the_artifact_markdown(spec, loop_home):
    import mlflow

    from features.settings import Settings
    from models.registry import Registry
    from models.report import retrain_summary

    frame, _ = world(spec, seed=7)
    evidence = _evidence(spec, frame, challenger_threshold=0.45)
    registry = Registry(Settings.from_env())
    with mlflow.start_run(experiment_id=registry.experiment_id("gates-test")) as run:
        pass
    registry.log_run_metrics(run.info.run_id, evidence.metrics())
    logged = registry.client.get_run(run.info.run_id).data.metrics
    assert logged["diff_value_dr_low"] == pytest.approx(evidence.differences["value_dr"].low)
    assert logged["ope_dr_challenger_coverage"] == pytest.approx(evidence.challenger_value["dr"].coverage)
    outcome = {"status": "trained", "event": "kept_champion", "version": "2", "threshold": 0.45, "threshold_reason": "-",
               "reasons": ["not enough evidence"], "rows": frame.height, "as_of": "-", "split": {
                   "fit_rows": 1, "calibration_rows": 1, "test_rows": 1}, "spec_hash": "-", "run_id": run.info.run_id,
               "comparison": [], "differences": evidence.table(), "policy_values": evidence.value_table(),
               "one_sided_alpha": evidence.one_sided_alpha}
    text = retrain_summary(spec.name, "2026-W20", outcome)
    assert "Off-policy value" in text and "coverage" in text and "value_dr" in text and "95% intervals" in text


def test_a_first_model_worse_than_the_cold_start_rule_is_kept_when_the_spec_asks(spec):
    """The rule plays champion: its policy is the logging threshold here, and the challenger's is worse."""
    frame, _ = world(spec, seed=6)
    x = frame["x"].to_numpy()
    assert true_value(spec, x, 0.65) < true_value(spec, x, LOG_THRESHOLD)
    evidence = _evidence(spec, frame, challenger_threshold=0.65)
    assert evidence.challenger_value["dr"].coverage >= spec.gates.min_coverage
    assert evidence.differences["value_dr"].high < 0
    # By default the first model needs only the absolute gates ...
    assert decide_promotion(spec.gates, GOOD, None, frame.height, None, evidence).action == "promote"
    # ... with first_model_against_rule it needs the value gate against the rule, and fails it.
    strict = dataclasses.replace(spec.gates, first_model_against_rule=True)
    kept = decide_promotion(strict, GOOD, None, frame.height, None, evidence)
    assert kept.action == "keep"
    assert kept.reasons[0].startswith("challenger is worse") and "cold-start rule" in kept.reasons[0]
    # A first model the logs show to be better than the rule is promoted on the same evidence.
    better = _evidence(spec, frame, challenger_threshold=0.4)
    assert true_value(spec, x, 0.4) > true_value(spec, x, LOG_THRESHOLD)
    assert decide_promotion(strict, GOOD, None, frame.height, None, better).action == "promote"


def test_the_verdict_says_how_its_value_interval_was_made(spec):
    frame, _ = world(spec, seed=4)
    frame = frame.gather_every(10)
    evidence = _evidence(spec, frame, challenger_threshold=0.49)
    reasons = {kind: decide_promotion(dataclasses.replace(spec.gates, value_interval=kind), GOOD, CHAMPION,
                                      frame.height, 0.01, evidence).reasons[0] for kind in ("widened", "bootstrap")}
    assert reasons["widened"].startswith("not enough evidence") and "widened to the model-based interval" in reasons["widened"]
    assert "widened" not in reasons["bootstrap"]
