"""Tests of the synthetic world: determinism, schema, common random numbers, drifts, events.

The expected values here are computed from the specs' objectives and the world's public
probabilities, never copied from the simulator's output, so a wrong formula fails the tests.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from features.clock import BERLIN, week_start as clock_week_start
from features.spec import ModelSpec, load_specs
from simulator.world import MODELS, NEW_LEAD_SOURCE, NEW_RETURN_TEMPLATE, World, WorldConfig

SPECS_DIR = Path(__file__).resolve().parents[1] / "data" / "specs"
DTYPES = {"categorical": pl.String, "numeric": pl.Float64, "boolean": pl.Boolean}
REVIEW_OUTCOMES = {"accepted", "edited", "rejected"}
CUSTOMER_OUTCOMES = {"resolved", "complained", "recontacted"}
AUDIT_OUTCOMES = {"audit_pass", "audit_fail"}


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return load_specs(SPECS_DIR)


@pytest.fixture(scope="module")
def world(specs: dict[str, ModelSpec]) -> World:
    return World(WorldConfig(), specs)


def constant(spec: ModelSpec, decision: str, n: int) -> pl.Series:
    return pl.Series("decision", [decision] * n, dtype=pl.String)


def random_policy(spec: ModelSpec, n: int, seed: int = 0) -> pl.Series:
    """A mixed policy so that both decisions' code paths are exercised."""
    take = np.random.default_rng(seed).random(n) < 0.5
    return pl.Series("decision", np.where(take, spec.positive_decision, spec.negative_decision), dtype=pl.String)


def expected_value(world: World, spec: ModelSpec, population: pl.DataFrame, decisions: pl.Series) -> float:
    """Expected EUR of a policy, written out from the spec's objective (independently of the world)."""
    p = world.true_probability(spec.name, population, decisions).to_numpy()
    act = (decisions == spec.positive_decision).to_numpy()
    o = spec.objective
    if spec.name == "lead_scoring":
        return float(np.sum(o.value_per_conversion * p - o.cost_per_action * act))
    return float(np.sum(act * (o.value_per_action * p - o.cost_per_failure * (1 - p))))


def frozen_decisions(world: World, model: str, population: pl.DataFrame) -> pl.Series:
    """The pre-drift oracle's behaviour: the new category is treated like an established one.

    website_form is the baseline source whose effect is about the average of the pre-drift mix;
    ret_v2 is treated like the ret_v1 template it replaced.
    """
    column, new, old = (("source", NEW_LEAD_SOURCE, "website_form") if model == "lead_scoring"
                        else ("template_id", NEW_RETURN_TEMPLATE, "ret_v1"))
    return world.oracle_decisions(model, population.with_columns(pl.col(column).replace(new, old)))


def events_for(world: World, spec: ModelSpec, week: int, seed: int = 0):
    population = world.population(spec.name, week)
    decisions = random_policy(spec, population.height, seed)
    action_ids = pl.Series("action_id", [f"a{i}" for i in range(population.height)])
    decided_at = population["arrived_at"] + timedelta(minutes=5)
    events = world.outcome_events(spec.name, population, decisions, action_ids, decided_at)
    actions = pl.DataFrame({"action_id": action_ids, "decision": decisions, "decided_at": decided_at,
                            "success": world.realise(spec.name, population, decisions)["success"]})
    return population, actions, events


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("model", MODELS)
def test_same_seed_gives_identical_population(specs, model):
    for week in (0, 10):
        a = World(WorldConfig(seed=11), specs).population(model, week)
        b = World(WorldConfig(seed=11), specs).population(model, week)
        assert_frame_equal(a, b)


@pytest.mark.parametrize("model", MODELS)
def test_different_seed_or_week_gives_different_population(specs, model):
    base = World(WorldConfig(seed=11), specs)
    other = World(WorldConfig(seed=12), specs).population(model, 2)
    features = specs[model].feature_names
    assert not base.population(model, 2).select(features).equals(other.select(features))
    assert not base.population(model, 2)["_draw"].equals(other["_draw"])
    assert not base.population(model, 2)["_draw"].equals(base.population(model, 3)["_draw"])


# ------------------------------------------------------------------------------ schema and time
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("week", [0, 12])
def test_population_schema_matches_spec(world, specs, model, week):
    spec = specs[model]
    population = world.population(model, week)
    n = WorldConfig().leads_per_week if model == "lead_scoring" else WorldConfig().emails_per_week
    assert population.height == n
    visible = [c for c in population.columns if not c.startswith("_")]
    assert visible == ["entity_ref", "arrived_at", *spec.feature_names]
    assert "_draw" in population.columns
    assert population["entity_ref"].dtype == pl.String
    assert population["entity_ref"].n_unique() == n
    assert population["arrived_at"].dtype == pl.Datetime("us", "UTC")
    for feature in spec.features:
        assert population[feature.name].dtype == DTYPES[feature.type], feature.name
        assert population[feature.name].null_count() == 0, feature.name
    draw = population["_draw"].to_numpy()
    assert draw.min() >= 0.0 and draw.max() < 1.0


@pytest.mark.parametrize("model", MODELS)
def test_arrivals_are_sorted_within_the_week(world, model):
    for week in (0, 11, 12):  # week 11 contains the switch to summer time
        arrived = world.population(model, week)["arrived_at"]
        assert arrived.is_sorted()
        assert arrived.min() >= world.week_start(week)
        assert arrived.max() < world.week_start(week + 1)


def test_week_start_is_berlin_monday_midnight(world):
    assert world.week_start(0) == WorldConfig().start
    for week in (0, 1, 11, 12, 30, 45):
        start = world.week_start(week)
        assert start.tzinfo is not None and start.utcoffset() == timedelta(0)
        local = start.astimezone(BERLIN)
        assert (local.weekday(), local.hour, local.minute) == (0, 0, 0)
        assert clock_week_start(start + timedelta(hours=1)) == start
    assert world.week_start(12) - world.week_start(11) == timedelta(hours=167)  # summer time


def test_pre_drift_categories_are_in_the_spec(world, specs):
    for model in MODELS:
        population = world.population(model, 0)
        for feature in specs[model].features:
            if feature.type == "categorical":
                assert set(population[feature.name].unique()) <= set(feature.categories), feature.name


# ------------------------------------------------------------------------------ truth and CRN
@pytest.mark.parametrize("model", MODELS)
def test_realise_is_deterministic_and_uses_common_random_numbers(world, specs, model):
    spec = specs[model]
    population = world.population(model, 3)
    decisions = random_policy(spec, population.height)
    first = world.realise(model, population, decisions)
    assert first.schema == pl.Schema({"success": pl.Boolean, "value": pl.Float64})
    assert_frame_equal(first, world.realise(model, population, decisions))
    # Same draws for every policy: success under 'act' and under 'do not act' is coupled.
    yes = world.realise(model, population, constant(spec, spec.positive_decision, population.height))
    no = world.realise(model, population, constant(spec, spec.negative_decision, population.height))
    assert not (no["success"] & ~yes["success"]).any()
    if model == "reply_acceptance":
        assert_series_equal(yes["success"], no["success"])


def test_lead_probabilities_follow_the_worlds_meeting_effect(world, specs):
    """The meeting's effect is the world's truth, not read from the spec (which a model may get wrong)."""
    from simulator.world import _MEETING_EFFECT

    spec = specs["lead_scoring"]
    population = world.population("lead_scoring", 7)
    n = population.height
    p_meet = world.true_probability("lead_scoring", population, constant(spec, "propose_meeting", n)).to_numpy()
    p_nurt = world.true_probability("lead_scoring", population, constant(spec, "nurture", n)).to_numpy()
    assert np.allclose(p_nurt, (1 - _MEETING_EFFECT) * p_meet)
    assert ((p_meet > 0) & (p_meet < 1)).all()


def test_reply_probability_does_not_depend_on_the_decision(world, specs):
    spec = specs["reply_acceptance"]
    population = world.population("reply_acceptance", 4)
    a = world.true_probability("reply_acceptance", population, random_policy(spec, population.height, 1))
    b = world.true_probability("reply_acceptance", population, random_policy(spec, population.height, 2))
    assert_series_equal(a, b)


@pytest.mark.parametrize("model", MODELS)
def test_realised_value_follows_the_objective(world, specs, model):
    spec = specs[model]
    o = spec.objective
    population = world.population(model, 5)
    decisions = random_policy(spec, population.height)
    realised = world.realise(model, population, decisions)
    act = (decisions == spec.positive_decision).to_numpy()
    ok = realised["success"].to_numpy()
    if model == "lead_scoring":
        expected = o.value_per_conversion * ok - o.cost_per_action * act
    else:
        expected = o.value_per_action * (act & ok) - o.cost_per_failure * (act & ~ok)
    assert np.allclose(realised["value"].to_numpy(), expected)


@pytest.mark.parametrize("model", MODELS)
def test_realised_success_rate_matches_true_probability(world, specs, model):
    spec = specs[model]
    p, ok = [], []
    for week in range(8):
        population = world.population(model, week)
        decisions = random_policy(spec, population.height, week)
        p.append(world.true_probability(model, population, decisions).to_numpy())
        ok.append(world.realise(model, population, decisions)["success"].to_numpy())
    p_all, ok_all = np.concatenate(p), np.concatenate(ok)
    se = np.sqrt(np.sum(p_all * (1 - p_all))) / p_all.size
    assert abs(ok_all.mean() - p_all.mean()) < 4 * se


@pytest.mark.parametrize("model", MODELS)
def test_oracle_beats_every_constant_policy(world, specs, model):
    spec = specs[model]
    population = pl.concat([world.population(model, w) for w in (0, 4, 8, 12)])
    n = population.height
    oracle = expected_value(world, spec, population, world.oracle_decisions(model, population))
    # Strictly better: neither "always act" nor "never act" is optimal in this world.
    for decision in spec.decisions:
        assert oracle > expected_value(world, spec, population, constant(spec, decision, n))
    assert oracle > expected_value(world, spec, population, random_policy(spec, n))
    # Per-entity optimal: flipping any share of its decisions cannot help.
    flips = np.random.default_rng(3).random(n) < 0.1
    decisions = world.oracle_decisions(model, population).to_numpy()
    flipped = np.where(flips, np.where(decisions == spec.positive_decision, spec.negative_decision,
                                       spec.positive_decision), decisions)
    assert oracle >= expected_value(world, spec, population, pl.Series(flipped, dtype=pl.String))
    assert world.oracle_decisions(model, population).is_in(list(spec.decisions)).all()


def test_unknown_decisions_are_rejected(world, specs):
    population = world.population("lead_scoring", 0)
    with pytest.raises(ValueError):
        world.realise("lead_scoring", population, constant(specs["lead_scoring"], "auto_send", population.height))
    with pytest.raises(ValueError):
        world.realise("lead_scoring", population, constant(specs["lead_scoring"], "nurture", 3))


# ------------------------------------------------------------------------------ ground truth levels
def test_lead_truth_is_plausible(world, specs):
    population = world.population("lead_scoring", 1)
    n = population.height
    p = world.true_probability("lead_scoring", population, constant(specs["lead_scoring"], "propose_meeting", n))
    assert 0.09 <= p.mean() <= 0.15
    assert p.min() < 0.02 and p.max() > 0.45
    assert 0.15 <= population["requested_demo"].mean() <= 0.25
    assert population["company_size"].min() >= 10 and population["company_size"].max() <= 5000
    assert population["pages_visited"].max() <= 40 and population["email_opens"].max() <= 20
    with_demo = p.filter(population["requested_demo"]).mean()
    assert with_demo > 2 * p.filter(~population["requested_demo"]).mean()


def test_reply_truth_is_plausible(world, specs):
    population = world.population("reply_acceptance", 1)
    n = population.height
    a = world.true_probability("reply_acceptance", population, constant(specs["reply_acceptance"], "auto_send", n))
    by_intent = population.with_columns(a=a).group_by("intent").agg(pl.col("a").mean(), pl.len())
    mean = dict(zip(by_intent["intent"], by_intent["a"]))
    assert mean["order_status"] > mean["invoice_question"] > mean["quote_request"] > mean["complaint"]
    assert mean["return"] > 0.93 and mean["complaint"] < 0.75
    assert (a > 0.95).mean() > 0.4, "auto-sending must pay for a good share of drafts"
    templates = population.select("intent", "template_id").unique()
    assert templates.height == templates["intent"].n_unique() == 5  # template follows intent
    assert population["message_length"].min() >= 80 and population["message_length"].max() <= 3000


# ------------------------------------------------------------------------------ drifts
def test_lead_source_drift(world, specs):
    drift = WorldConfig().lead_source_drift_week
    for week in range(drift):
        assert NEW_LEAD_SOURCE not in world.population("lead_scoring", week)["source"].to_list()
    for week in (drift, drift + 3):
        population = world.population("lead_scoring", week)
        new = population["source"] == NEW_LEAD_SOURCE
        assert 0.2 <= new.mean() <= 0.3
        old = population.filter(~new)
        market = population.filter(new)
        assert market["pages_visited"].mean() > 2 * old["pages_visited"].mean()
        assert market["email_opens"].mean() > 2 * old["email_opens"].mean()
        assert 0.33 <= market["requested_demo"].mean() <= 0.47
        p = world.true_probability("lead_scoring", market,
                                   constant(specs["lead_scoring"], "propose_meeting", market.height))
        assert p.max() < 0.05 and 0.005 < p.mean() < 0.03


def test_reply_template_drift(world, specs):
    drift = WorldConfig().reply_template_drift_week
    before = world.population("reply_acceptance", drift - 1)
    after = world.population("reply_acceptance", drift)
    assert set(before.filter(pl.col("intent") == "return")["template_id"].unique()) == {"ret_v1"}
    assert set(after.filter(pl.col("intent") == "return")["template_id"].unique()) == {NEW_RETURN_TEMPLATE}
    assert NEW_RETURN_TEMPLATE not in before["template_id"].to_list()
    returns = after.filter(pl.col("intent") == "return")
    a = world.true_probability("reply_acceptance", returns,
                               constant(specs["reply_acceptance"], "auto_send", returns.height))
    assert 0.45 <= a.mean() <= 0.65


@pytest.mark.parametrize("model", MODELS)
def test_drift_costs_a_frozen_policy_at_least_15_percent(world, specs, model):
    spec = specs[model]
    drift = (WorldConfig().lead_source_drift_week if model == "lead_scoring"
             else WorldConfig().reply_template_drift_week)
    for week in (drift - 1, drift, drift + 2):
        population = world.population(model, week)
        oracle = expected_value(world, spec, population, world.oracle_decisions(model, population))
        frozen = expected_value(world, spec, population, frozen_decisions(world, model, population))
        assert oracle > 0
        if week < drift:
            assert frozen == pytest.approx(oracle)
        else:
            assert frozen <= 0.85 * oracle, (week, oracle, frozen)


# ------------------------------------------------------------------------------ outcome events
@pytest.mark.parametrize("model", MODELS)
def test_outcome_events_schema_values_and_timing(world, specs, model):
    spec = specs[model]
    _, actions, events = events_for(world, spec, 6)
    assert events.schema == pl.Schema({"action_id": pl.String, "observed_at": pl.Datetime("us", "UTC"),
                                       "outcome": pl.String, "revenue": pl.Float64, "share_kept": pl.Float64})
    assert events.height > 0
    assert set(events["outcome"].unique()) <= set(spec.outcomes.values)
    joined = events.join(actions, on="action_id", how="left")
    assert joined["decided_at"].null_count() == 0
    assert (joined["observed_at"] > joined["decided_at"]).all()
    _, _, again = events_for(world, spec, 6)
    assert_frame_equal(events, again)


def test_lead_events_reveal_conversions_with_delay_and_revenue(world, specs):
    spec = specs["lead_scoring"]
    _, actions, events = events_for(world, spec, 2)
    joined = events.join(actions, on="action_id")
    assert events["action_id"].n_unique() == events.height  # at most one event per lead
    converted = joined.filter(pl.col("outcome") == "converted")
    assert set(converted["action_id"]) == set(actions.filter("success")["action_id"])
    assert converted["revenue"].null_count() == 0 and (converted["revenue"] > 0).all()
    assert 0.7 * spec.objective.value_per_conversion < converted["revenue"].mean() \
        < 1.3 * spec.objective.value_per_conversion
    assert joined.filter(pl.col("outcome") == "lost")["revenue"].null_count() == \
        joined.filter(pl.col("outcome") == "lost").height
    days = (joined["observed_at"] - joined["decided_at"]).dt.total_seconds() / 86400
    delay = joined.with_columns(days=days)
    conv_days = delay.filter(pl.col("outcome") == "converted")["days"]
    lost_days = delay.filter(pl.col("outcome") == "lost")["days"]
    assert conv_days.min() >= 3 and conv_days.max() <= 30
    assert lost_days.min() >= 3 and lost_days.max() <= 30  # closed on the same sales cycle as wins
    lost_share = joined.filter(pl.col("outcome") == "lost").height / (~actions["success"]).sum()
    assert 0.85 <= lost_share <= 0.95


def test_reply_events_depend_on_the_decision(world, specs):
    spec = specs["reply_acceptance"]
    population, actions, events = events_for(world, spec, 10)
    joined = events.join(actions, on="action_id")
    auto = joined.filter(pl.col("decision") == "auto_send")
    reviewed = joined.filter(pl.col("decision") == "human_review")
    assert not auto["outcome"].is_in(list(REVIEW_OUTCOMES)).any()
    assert reviewed["outcome"].is_in(list(REVIEW_OUTCOMES)).all()
    assert auto["outcome"].is_in(list(CUSTOMER_OUTCOMES | AUDIT_OUTCOMES)).all()
    # A reviewer sees the truth: accepted iff acceptable.
    assert_series_equal(reviewed["outcome"] == "accepted", reviewed["success"], check_names=False)
    # Every auto-sent reply gets exactly one customer follow-up; a ~5% sample also an exact audit.
    follow_ups = auto.filter(pl.col("outcome").is_in(list(CUSTOMER_OUTCOMES)))
    assert follow_ups["action_id"].n_unique() == follow_ups.height == (actions["decision"] == "auto_send").sum()
    audits = auto.filter(pl.col("outcome").is_in(list(AUDIT_OUTCOMES)))
    assert 0.03 <= audits.height / follow_ups.height <= 0.07
    assert_series_equal(audits["outcome"] == "audit_pass", audits["success"], check_names=False)
    hours = (joined["observed_at"] - joined["decided_at"]).dt.total_seconds() / 3600
    timed = joined.with_columns(hours=hours)
    assert timed.filter(pl.col("outcome").is_in(list(REVIEW_OUTCOMES)))["hours"].is_between(2, 20).all()
    assert timed.filter(pl.col("outcome").is_in(list(CUSTOMER_OUTCOMES)))["hours"].is_between(6, 48).all()
    assert timed.filter(pl.col("outcome").is_in(list(AUDIT_OUTCOMES)))["hours"].is_between(50, 70).all()
    # Bad auto-sent replies draw complaints far more often than good ones.
    bad = follow_ups.filter(~pl.col("success"))
    good = follow_ups.filter(pl.col("success"))
    assert (bad["outcome"] == "complained").mean() > 0.3 > (good["outcome"] == "complained").mean()
    assert joined["revenue"].null_count() == joined.height
    # Edited drafts say how much of the draft was kept, in [0, 1]; nothing else does. Near misses keep more.
    edited = joined.filter(pl.col("outcome") == "edited")
    assert edited.height and edited["share_kept"].is_between(0, 1).all() and edited["share_kept"].null_count() == 0
    assert joined.filter(pl.col("outcome") != "edited")["share_kept"].null_count() == joined.height - edited.height
    truth = pl.DataFrame({"action_id": actions["action_id"],
                          "truth": world.true_probability(spec.name, population, actions["decision"])})
    edited = edited.join(truth, on="action_id")
    assert np.corrcoef(edited["truth"].to_numpy(), edited["share_kept"].to_numpy())[0, 1] > 0.3

