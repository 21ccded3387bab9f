"""Cheap recalibration: a constructed world where the champion's lead scores become systematically too high
(every lead converts less often, the ranking is unchanged) recalibrates itself through the real flow."""

from __future__ import annotations

import dataclasses

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from features.clock import SimulatedClock
from features.ingest import ingest_paths
from features.store import EventStore
from features.training_set import Split, iso_week_expr
from flows.runtime import Runtime
from models.evaluate import expected_calibration_error
from models.policy import Policy
from models.recalibrate import base_pipeline, check_calibration, expected_auc_if_only_shifted
from models.registry import CHAMPION
from models.segments import logit, sigmoid
from models.train import fit_model, sklearn_inputs
from simulator.world import World, WorldConfig

MODEL = "lead_scoring"
DROP = 1.5           # logit shift of every lead's conversion chance after the champion was trained


def _truth(world: World, population: pl.DataFrame, shift: float = 0.0) -> np.ndarray:
    decisions = pl.Series([world.specs[MODEL].positive_decision] * population.height)
    return sigmoid(logit(world.true_probability(MODEL, population, decisions).to_numpy()) + shift)


def _labelled(world: World, week: int, shift: float = 0.0) -> pl.DataFrame:
    population = world.population(MODEL, week)
    label = (population["_draw"].to_numpy() < _truth(world, population, shift)).astype(np.int8)
    return population.with_columns(pl.Series("label", label), pl.col("arrived_at").alias("decided_at"),
                                   pl.Series("grade", label.astype(float))).with_columns(iso_week_expr("decided_at").alias("week"))


def test_the_calibration_check_separates_miscalibration_from_a_lost_ranking(specs):
    spec = specs[MODEL]
    rng = np.random.default_rng(0)
    scores = sigmoid(rng.normal(-1.5, 1.2, 5000))
    calibrated = (rng.random(scores.size) < scores).astype(float)
    too_high = (rng.random(scores.size) < sigmoid(logit(scores) - DROP)).astype(float)
    shuffled = (rng.random(scores.size) < rng.permutation(sigmoid(logit(scores) - DROP))).astype(float)
    auc = 0.80
    assert not check_calibration(spec, calibrated, scores, auc).needed
    needed = check_calibration(spec, too_high, scores, auc)
    assert needed.needed and needed.calibration_error > spec.gates.max_calibration_error, needed.reason
    lost = check_calibration(spec, shuffled, scores, auc)
    assert not lost.needed and "retraining" in lost.reason
    assert not check_calibration(spec, too_high[:100], scores[:100], auc).needed       # too few rows to judge


def test_the_auc_a_shifted_champion_implies_is_what_labels_drawn_that_way_show():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    probabilities = np.round(sigmoid(rng.normal(-1.5, 1.2, 3000)), 3)     # rounded: ties are counted too
    shifted = sigmoid(logit(probabilities) - DROP)
    draws = [(rng.random(shifted.size) < shifted) for _ in range(300)]
    observed = np.mean([roc_auc_score(d, probabilities) for d in draws])
    expected = [expected_auc_if_only_shifted(d, probabilities) for d in draws[:20]]
    assert np.ptp(expected) < 0.01                   # it depends on the labels only through their rate
    assert abs(np.mean(expected) - observed) < 0.005
    # The shift moves the AUC of an unchanged, perfect ranking: the training AUC is the wrong yardstick afterwards.
    unshifted = np.mean([roc_auc_score(rng.random(probabilities.size) < probabilities, probabilities) for _ in range(100)])
    assert abs(observed - unshifted) > 0.01


@pytest.mark.usefixtures("prefect_harness")
def test_scores_that_became_too_high_are_recalibrated_on_the_champions_pipeline(loop_home, tmp_path, specs):
    from flows.recalibrate import recalibrate_flow

    runtime = Runtime.from_env()
    spec, key = specs[MODEL], runtime.settings.pseudonym_key
    # No new lead source in these weeks (the default world adds one in week 6): only the base rate moves.
    world = World(WorldConfig(seed=21, leads_per_week=2000, lead_source_drift_week=99), specs)
    # The champion: trained, calibrated and tested while the world was as it learnt it.
    # A pooled champion (the constructed labels do not depend on the decision): recalibration keeps its kind.
    pooled = dataclasses.replace(spec, training=dataclasses.replace(spec.training, decision_aware=False))
    trained = fit_model(Split(*(_labelled(world, w) for w in range(3))), pooled)
    _, champion_version = runtime.registry.log_training(
        spec, trained, lineage={"as_of": world.week_start(3).isoformat(), "rows": 6000}, input_example=_labelled(world, 0).head(5),
        week="2026-W03", plots={}, run_name="champion")
    runtime.registry.set_alias(MODEL, CHAMPION, champion_version)
    champion = runtime.registry.load(MODEL, CHAMPION)

    # Then every lead converts less often (same order): four weeks decided by the champion, outcomes within days.
    store = EventStore(runtime.settings.store_uri, specs)
    as_of = world.week_start(7) + timedelta(hours=3)
    files = []
    for week in range(3, 7):
        population = world.population(MODEL, week)
        entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)
        actions = Policy(spec, champion).decide(entities, key)
        converted = population["_draw"].to_numpy() < _truth(world, population, -DROP)
        outcomes = actions.select("action_id", (pl.col("decided_at") + timedelta(days=4)).alias("observed_at"),
                                  pl.Series("outcome", np.where(converted, "converted", "lost"))
                                  ).filter(pl.col("observed_at") <= as_of)
        actions.write_parquet(tmp_path / f"actions-{week}.parquet")
        outcomes.write_parquet(tmp_path / f"outcomes-{week}.parquet")
        files += [tmp_path / f"actions-{week}.parquet", tmp_path / f"outcomes-{week}.parquet"]
    report = ingest_paths(files, store, SimulatedClock(as_of), key)
    assert report.clean

    outcome = recalibrate_flow(MODEL, as_of)

    assert outcome["status"] == "recalibrated", outcome
    check = outcome["check"]
    assert check["calibration_error"] > spec.gates.max_calibration_error          # the champion, on the latest weeks
    new = runtime.registry.get_version(MODEL, outcome["version"])
    assert new.tags["recalibrated_from"] == champion_version
    assert new.tags["base_version"] == champion_version and new.tags["kind"] == "recalibration"
    # On the same test weeks the recalibrated version is under the bound, the champion was not.
    assert float(new.tags["test_calibration_error"]) < spec.gates.max_calibration_error
    comparison = {row["metric"]: row for row in outcome["comparison"]}
    assert comparison["calibration_error"]["champion"] > spec.gates.max_calibration_error
    assert comparison["calibration_error"]["challenger"] < spec.gates.max_calibration_error
    assert comparison["roc_auc"]["challenger"] == pytest.approx(comparison["roc_auc"]["champion"], abs=0.01)
    # Same base estimator: the registered model's pipeline gives the champion's raw scores.
    recalibrated = runtime.registry.load(MODEL, outcome["version"])
    probe = sklearn_inputs(_labelled(world, 6).head(300), spec)
    np.testing.assert_array_equal(base_pipeline(recalibrated.estimator).predict_proba(probe),
                                  base_pipeline(champion.estimator).predict_proba(probe))
    # Independent of the pipeline's own metrics: on fresh leads of the changed world the new scores are right.
    fresh = _labelled(world, 9, -DROP)
    new_scores = Policy(spec, recalibrated).scores(fresh)
    old_scores = Policy(spec, champion).scores(fresh)
    truth = _truth(world, fresh, -DROP)
    assert expected_calibration_error(truth, new_scores) < spec.gates.max_calibration_error
    assert expected_calibration_error(truth, old_scores) > spec.gates.max_calibration_error
    # It went through the same gates: a decision for the version is in the audit table.
    audit = store.scan_audit().filter(pl.col("version") == outcome["version"]).collect()
    assert audit["event"].to_list() == [outcome["event"]]
    assert outcome["event"] in ("promoted", "kept_champion", "awaiting_approval")
