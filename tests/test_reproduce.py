"""Retraining from a logged run (same as-of data, spec hash and seed) gives the same model and metrics."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from features.clock import SimulatedClock
from features.ingest import ingest_paths
from features.store import EventStore
from features.training_set import time_split
from features.windows import labelled_frame, training_lineage
from flows.runtime import Runtime
from models.policy import Policy
from models.registry import Registry
from models.reproduce import reproduce_run
from models.train import fit_model, sklearn_inputs
from simulator.world import World, WorldConfig

MODEL = "reply_acceptance"


def _simulate_weeks(world: World, spec, weeks: range, key: bytes, folder, until, delivered_by=None) -> list:
    """Files of the weeks' actions and of their outcomes observed by ``until`` and delivered by ``delivered_by``."""
    files = []
    for week in weeks:
        population = world.population(MODEL, week)
        entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)
        actions = Policy(spec).decide(entities, key)
        events = world.outcome_events(MODEL, population, actions["decision"], actions["action_id"], actions["decided_at"])
        actions.write_parquet(folder / f"actions-{week}.parquet")
        events.filter(pl.col("observed_at") <= (delivered_by or until)).write_parquet(folder / f"outcomes-{week}.parquet")
        files += [folder / f"actions-{week}.parquet", folder / f"outcomes-{week}.parquet"]
    return files


def test_a_logged_run_is_reproduced_exactly_after_more_data_arrived(loop_home, tmp_path, specs):
    runtime = Runtime.from_env()
    spec, key = specs[MODEL], runtime.settings.pseudonym_key
    store = EventStore(runtime.settings.store_uri, specs)
    world = World(WorldConfig(seed=5, emails_per_week=3000), specs)
    as_of = world.week_start(3) + timedelta(hours=3)
    # The CRM delivers outcomes two days late: those of the last two days before as_of arrive after it.
    ingest_paths(_simulate_weeks(world, spec, range(3), key, tmp_path, as_of, delivered_by=as_of - timedelta(days=2)),
                 store, SimulatedClock(as_of), key)

    labelled = labelled_frame(store, spec, as_of)
    split = time_split(labelled, spec)
    trained = fit_model(split, spec)
    registry = Registry(runtime.settings)
    run_id, _ = registry.log_training(spec, trained, lineage=training_lineage(store, spec, labelled, as_of),
                                      input_example=split.test.head(5), week="2026-W04", plots={}, run_name="original")

    # A week later: the late outcomes (observed before as_of), new actions and their outcomes are in the tables.
    later = world.week_start(4) + timedelta(hours=3)
    (tmp_path / "later").mkdir()
    ingest_paths(_simulate_weeks(world, spec, range(4), key, tmp_path / "later", later), store, SimulatedClock(later), key)
    assert labelled_frame(store, spec, later).height > labelled.height

    again = reproduce_run(registry, store, spec, run_id)
    assert again.rebuild.matches, again.rebuild.explain()
    assert again.differences() == {}, again.differences()
    assert again.identical
    probe = sklearn_inputs(split.test.head(500), spec)
    np.testing.assert_array_equal(again.trained.estimator.predict_proba(probe), trained.estimator.predict_proba(probe))
    assert again.trained.threshold.threshold == trained.threshold.threshold
