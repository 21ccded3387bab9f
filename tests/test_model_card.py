"""Model cards: intervals that resample whole days, figures that match the model, and the card on the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features.training_set import Split
from flows.runtime import Runtime
from models.model_card import _day_bootstrap, model_card
from models.train import fit_model
from simulator.world import World, WorldConfig


def test_day_blocks_that_are_identical_give_an_interval_of_width_zero():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50)
    days = np.repeat(np.arange(6), 50)
    intervals = _day_bootstrap(days, np.tile(labels, 6), np.tile(scores, 6), np.tile(scores, 6), 0.5, seed=1, resamples=50)
    assert intervals["positive_share"][0] == pytest.approx(intervals["positive_share"][1])
    assert intervals["positive_share"][0] == pytest.approx((scores >= 0.5).mean())


def test_day_blocks_widen_the_interval_when_days_differ():
    rng = np.random.default_rng(0)
    days = np.repeat(np.arange(10), 100)
    # Each day has its own share of high scores: resampling days must show that spread.
    scores = np.concatenate([rng.random(100) * (0.6 + 0.08 * d) for d in range(10)])
    labels = rng.integers(0, 2, 1000)
    by_day = _day_bootstrap(days, labels, scores, scores, 0.5, seed=1, resamples=200)
    by_row = _day_bootstrap(np.arange(1000), labels, scores, scores, 0.5, seed=1, resamples=200)
    assert by_day["positive_share"][1] - by_day["positive_share"][0] > by_row["positive_share"][1] - by_row["positive_share"][0]


def test_the_card_describes_the_registered_version(loop_home, specs):
    runtime = Runtime.from_env()
    spec = specs["lead_scoring"]
    world = World(WorldConfig(seed=5, leads_per_week=1500), specs)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    frames = []
    for week in range(3):
        population = world.population("lead_scoring", week)
        label = (population["requested_demo"].to_numpy() | (population["pages_visited"].to_numpy() > 6)).astype(int)
        flip = np.random.default_rng(week).random(population.height) < 0.2
        meeting = np.random.default_rng(10 + week).random(population.height) < 0.5
        frames.append(population.with_columns(label=pl.Series(label ^ flip), week=pl.lit(f"2026-W0{week + 2}"),
                                              decided_at=pl.col("arrived_at"),
                                              decision=pl.Series(np.where(meeting, "propose_meeting", "nurture"))))
    split = Split(fit=frames[0], calibration=frames[1], test=frames[2])
    trained = fit_model(split, spec)
    lineage = {"as_of": (start + timedelta(weeks=4)).isoformat(), "rows": 4500, "positives": 1000, "spec_hash": spec.content_hash,
               "action_digest": "abc", "data_from": "2026-01-05", "data_to": "2026-01-25", **split.sizes()}
    run_id, version = runtime.registry.log_training(spec, trained, lineage=lineage, input_example=split.test.head(5),
                                                    week="2026-W04", plots={}, run_name="card-test")
    card = model_card(spec, trained, split.test, lineage, version)
    runtime.registry.attach_model_card("lead_scoring", version, run_id, card)

    share = (trained.policy_scores >= trained.threshold.threshold).mean()
    assert f"{share:.1%} of the test leads" in card
    assert f"| ROC AUC | {trained.test_metrics['roc_auc']:.3f} |" in card
    assert f"threshold **{trained.threshold.threshold:.3f}**" in card
    days = split.test.get_column("decided_at").dt.date().n_unique()
    assert f"({days} days, " in card
    assert runtime.registry.get_version("lead_scoring", version).description == card
    import mlflow

    assert mlflow.artifacts.load_text(f"runs:/{run_id}/model_card.md") == card
