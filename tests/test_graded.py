"""Graded reply outcomes: the spec's mapping, and a model trained on grades estimating the expected grade."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.spec import SpecError, parse_spec
from features.training_set import Split, iso_week_expr
from models.train import fit_model
from simulator.world import World, WorldConfig

REPO = Path(__file__).resolve().parents[1]
REPLY_SPEC = REPO / "data" / "specs" / "reply_acceptance.toml"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("edited = \"share_kept\"", "edited = 1.4", "a grade is a number in [0, 1]"),
    ("rejected = 0.0\n", "rejected = 0.0\nbounced = 0.0\n", "not one of the outcome values"),
    ("recontacted = 0.5\n", "", "misses terminal outcomes ['recontacted']"),
    ("accepted = 1.0", "accepted = \"share_kept\"", "only a non-positive outcome"),
    ("complained = 0.0", "complained = 0.9", "contradicts the binary label"),
    ("resolved = 1.0", "resolved = 0.4", "contradicts the binary label"),
])
def test_the_spec_refuses_grades_that_do_not_fit_its_outcomes(old, new, message):
    text = REPLY_SPEC.read_text(encoding="utf-8")
    assert old in text
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(text.replace(old, new, 1), REPLY_SPEC)


def _weeks(world: World, graded: bool) -> Split:
    """Order-status drafts: 60 % accepted, the rest edited keeping half the draft (expected grade 0.8, acceptance
    as sent 0.6). Every other intent: 90 % accepted, the rest rejected (0.9 either way)."""
    frames = []
    for week in range(3):
        population = world.population("reply_acceptance", week)
        rng = np.random.default_rng(week)
        order_status = (population["intent"] == "order_status").to_numpy()
        accepted = rng.random(population.height) < np.where(order_status, 0.6, 0.9)
        grade = np.where(accepted, 1.0, np.where(order_status, 0.5, 0.0))
        frames.append(population.with_columns(
            pl.Series("label", accepted.astype(np.int8)), pl.Series("grade", grade if graded else accepted.astype(float)),
            pl.col("arrived_at").alias("decided_at")).with_columns(iso_week_expr("decided_at").alias("week")))
    return Split(*frames)


def test_a_model_trained_on_grades_estimates_the_expected_grade(specs):
    spec = specs["reply_acceptance"]
    world = World(WorldConfig(seed=4, emails_per_week=6000), specs)
    order_status = None
    means = {}
    for graded in (True, False):
        split = _weeks(world, graded)
        trained = fit_model(split, spec)
        order_status = (split.test["intent"] == "order_status").to_numpy()
        means[graded] = (trained.test_scores[order_status].mean(), trained.test_scores[~order_status].mean())
        assert trained.test_metrics["calibration_error"] < spec.gates.max_calibration_error
    assert means[True][0] == pytest.approx(0.8, abs=0.03)       # 0.6 · 1 + 0.4 · 0.5
    assert means[False][0] == pytest.approx(0.6, abs=0.03)      # the same rows as binary labels
    assert means[True][1] == pytest.approx(0.9, abs=0.03) and means[False][1] == pytest.approx(0.9, abs=0.03)


def test_without_a_grades_table_the_grade_is_the_label(specs):
    spec = specs["reply_acceptance"]
    plain = dataclasses.replace(spec, outcomes=dataclasses.replace(spec.outcomes, grades=()))
    assert spec.outcomes.graded and not plain.outcomes.graded
    assert not specs["lead_scoring"].outcomes.graded
