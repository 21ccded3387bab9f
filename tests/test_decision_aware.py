"""Decision-aware models on a constructed world whose true P(convert | lead, decision) is known.

The logs come from the loop's own situation: the cold-start rule decides (meetings for referrals,
trade-fair leads and demo requests) with a little exploration. A model fit on those logs as if the
decision did not matter is then asked about a population decided uniformly at random; the
decision-aware model is asked the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from features.training_set import Split
from models.decision_aware import (
    DecisionAwareModel,
    action_probabilities,
    decision_scores,
    outcome_probability,
    with_decision,
)
from features.build import model_inputs
from models.policy import Policy
from models.safe_decisions import SafeMode
from models.thresholds import incremental_value_threshold
from models.train import fit_model, predict_scores
from simulator.world import World, WorldConfig

KEY = b"test-key"


def _logged_week(world: World, spec, week: int) -> pl.DataFrame:
    population = world.population("lead_scoring", week)
    entities = population.rename({"arrived_at": "decided_at"})
    actions = Policy(spec).decide(entities, KEY)
    success = world.realise("lead_scoring", population, actions["decision"])["success"]
    return actions.with_columns(label=success.cast(pl.Int32), week=pl.lit(f"W{week:02d}"))


def _with_training(spec, **changes):
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, **changes))


def _with_rule_share(spec, share: float):
    return dataclasses.replace(spec, exploration=dataclasses.replace(spec.exploration, rule_share=share))


@pytest.fixture(scope="module")
def constructed(specs):
    # Decision-aware, exploring 5 % of the cold-start rule's decisions, without a prior on the meeting's effect:
    # what the explored rows alone teach.
    spec = _with_training(_with_rule_share(specs["lead_scoring"], 0.05), decision_effect_prior_sd=None)
    assert spec.training.decision_aware
    world = World(WorldConfig(seed=3, leads_per_week=5000, lead_source_drift_week=99), {**specs, "lead_scoring": spec})
    weeks = [_logged_week(world, spec, w) for w in range(4)]
    split = Split(fit=pl.concat(weeks[:2]), calibration=weeks[2], test=weeks[3])
    # A population decided uniformly at random: every (lead, decision) pair is equally represented.
    population = world.population("lead_scoring", 10)
    uniform = pl.Series("decision", np.where(np.random.default_rng(0).random(population.height) < 0.5,
                                             "propose_meeting", "nurture"))
    truth = world.true_probability("lead_scoring", population, uniform).to_numpy()
    evaluation = population.rename({"arrived_at": "decided_at"}).with_columns(uniform)
    return spec, split, evaluation, truth


def test_the_pooled_model_is_biased_and_the_decision_aware_one_is_not(constructed):
    spec, split, evaluation, truth = constructed
    pooled = fit_model(split, _with_training(spec, decision_aware=False)).estimator
    aware = fit_model(split, spec).estimator
    assert isinstance(aware, DecisionAwareModel) and not isinstance(pooled, DecisionAwareModel)

    p_pooled = outcome_probability(pooled, evaluation, spec)   # one probability per lead, whatever the decision
    p_aware = outcome_probability(aware, evaluation, spec)
    meeting = (evaluation["decision"] == "propose_meeting").to_numpy()
    mae_pooled, mae_aware = np.abs(p_pooled - truth).mean(), np.abs(p_aware - truth).mean()
    # The pooled model mixes both decisions' outcomes by the logging policy's shares: too low for
    # meetings, too high for nurtured leads. The decision-aware one is close on both.
    bias_pooled = [(p_pooled - truth)[meeting].mean(), (p_pooled - truth)[~meeting].mean()]
    bias_aware = [(p_aware - truth)[meeting].mean(), (p_aware - truth)[~meeting].mean()]
    print(f"MAE pooled {mae_pooled:.4f} aware {mae_aware:.4f}; bias pooled {bias_pooled} aware {bias_aware}")
    assert mae_aware < 0.75 * mae_pooled
    assert bias_pooled[0] < -0.02 and bias_pooled[1] > 0.02
    assert abs(bias_aware[0]) < 0.015 and abs(bias_aware[1]) < 0.015


def test_the_decision_compares_the_expected_value_of_both_decisions(constructed):
    spec, split, evaluation, _ = constructed
    trained = fit_model(split, spec)
    p_meeting, p_nurture = action_probabilities(trained.estimator, evaluation, spec)
    inputs = model_inputs(evaluation, spec)     # one stacked prediction gives what two separate ones give
    np.testing.assert_array_equal(p_meeting, trained.estimator.probability_under(inputs, "propose_meeting"))
    np.testing.assert_array_equal(p_nurture, trained.estimator.probability_under(inputs, "nurture"))
    scores = predict_scores(trained.estimator, evaluation, spec)
    np.testing.assert_allclose(scores, p_meeting - p_nurture)
    np.testing.assert_allclose(decision_scores(trained.estimator, evaluation, spec), scores)
    objective = spec.objective
    gain_covers_cost = objective.value_per_conversion * scores >= objective.cost_per_action
    # The threshold sits at the break-even on the calibration weeks' scores: acting is right exactly
    # where 2,500 EUR times the conversion chance the meeting adds covers its 150 EUR.
    assert trained.threshold.threshold == pytest.approx(objective.cost_per_action / objective.value_per_conversion, abs=0.01)
    agree = (scores >= trained.threshold.threshold) == gain_covers_cost
    assert agree.mean() > 0.98


@pytest.mark.parametrize("training", [{"estimator": "logistic"},
                                      {"estimator": "gradient_boosting", "decision_effect": "shared"}])
def test_a_shared_decision_effect_shifts_every_rows_log_odds_by_the_same_amount(constructed, training):
    spec, split, evaluation, _ = constructed
    spec = _with_training(spec, **training)
    pipeline = fit_model(split, spec).estimator.estimator.estimator.estimator   # calibrator -> frozen -> pipeline
    shift = _log_odds_shift(pipeline, evaluation, spec)
    assert np.ptp(shift) < 1e-6
    assert shift[0] > 0.3             # the meeting helps, learned from the explored rows (the truth: about 1.1)


def test_a_free_decision_effect_may_differ_by_lead(constructed):
    spec, split, evaluation, _ = constructed
    spec = _with_training(spec, estimator="gradient_boosting", decision_effect="free")
    pipeline = fit_model(split, spec).estimator.estimator.estimator.estimator
    assert np.ptp(_log_odds_shift(pipeline, evaluation, spec)) > 0.1


def test_the_logistic_model_learns_the_meetings_effect_from_few_explored_rows(constructed, specs):
    """The spec's lead model: on two weeks of rule-decided logs (5 % explored), the conversion chance a meeting
    adds is closer to the truth than free gradient boosting gets it."""
    spec, split, evaluation, _ = constructed
    assert spec.training.estimator == "logistic"
    population = evaluation.rename({"decided_at": "arrived_at"})
    truth = {d: World(WorldConfig(seed=3), specs).true_probability("lead_scoring", population, pl.Series([d] * population.height))
             for d in spec.decisions}
    true_uplift = (truth[spec.positive_decision] - truth[spec.negative_decision]).to_numpy()

    def uplift_error(model_spec) -> float:
        return float(np.abs(predict_scores(fit_model(split, model_spec).estimator, evaluation, model_spec) - true_uplift).mean())

    logistic, boosting = uplift_error(spec), uplift_error(_with_training(spec, estimator="gradient_boosting"))
    print(f"mean absolute error of the meeting's uplift: logistic {logistic:.4f}, gradient boosting {boosting:.4f}")
    assert logistic < 0.75 * boosting


def test_a_prior_on_the_meetings_effect_stands_in_for_explored_rows_and_gives_way_to_them(specs):
    """A cold-start rule that meets exactly the leads of one region, without exploration, logs the meeting's
    effect inseparably from the region's (which is none). A prior centred on the objective's action_effect (0.65,
    the world's truth here) recovers it; a wrong prior (0.2) gives way once half the decisions are explored."""
    from features.spec import Condition

    spec = _with_training(specs["lead_scoring"], estimator="logistic", decision_effect_prior_sd=None)
    spec = dataclasses.replace(spec, cold_start=(Condition("region", ("nord",), None, None),))
    world = World(WorldConfig(seed=5, leads_per_week=2000, lead_source_drift_week=99), specs)
    population = world.population("lead_scoring", 10)
    evaluation = population.rename({"arrived_at": "decided_at"})
    truth = {d: world.true_probability("lead_scoring", population, pl.Series([d] * population.height)).to_numpy()
             for d in spec.decisions}
    true_shift = np.mean(_logit(truth[spec.positive_decision]) - _logit(truth[spec.negative_decision]))
    true_uplift = truth[spec.positive_decision] - truth[spec.negative_decision]

    def fitted(logging_spec, model_spec) -> tuple[float, float]:
        """(the learned log-odds shift of a meeting, the mean absolute error of the uplift) on four weeks of logs."""
        weeks = [_logged_week(world, logging_spec, w) for w in range(4)]
        split = Split(fit=pl.concat(weeks[:2]), calibration=weeks[2], test=weeks[3])
        model = fit_model(split, model_spec).estimator
        shift = _log_odds_shift(model.estimator.estimator.estimator, evaluation, model_spec)[0]
        return shift, float(np.abs(predict_scores(model, evaluation, model_spec) - true_uplift).mean())

    rule_only = _with_rule_share(spec, 0.0)
    with_prior = _with_training(rule_only, decision_effect_prior_sd=0.3)
    shift_without, error_without = fitted(rule_only, rule_only)
    shift_with, error_with = fitted(rule_only, with_prior)
    print(f"true shift {true_shift:.2f}; rule-only logs: without prior {shift_without:.2f} (uplift error "
          f"{error_without:.4f}), with prior {shift_with:.2f} ({error_with:.4f})")
    assert abs(shift_with - true_shift) < 0.25 < abs(shift_without - true_shift)
    assert error_with < 0.5 * error_without

    wrong = dataclasses.replace(with_prior, objective=dataclasses.replace(spec.objective, action_effect=0.2))
    shift_wrong, error_wrong = fitted(_with_rule_share(spec, 0.45), wrong)
    prior_shift = -np.log(1 - 0.2)
    print(f"prior at {prior_shift:.2f}, logs with 45 % explored: learned {shift_wrong:.2f} ({error_wrong:.4f})")
    # More than half the way from the prior to the truth on two weeks of logs; further with more.
    assert abs(shift_wrong - true_shift) < 0.5 * abs(prior_shift - true_shift)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _log_odds_shift(pipeline, evaluation: pl.DataFrame, spec) -> np.ndarray:
    """logit P(convert | lead, meeting) - logit P(convert | lead, nurture) of an uncalibrated pipeline, per lead."""
    def log_odds(decision: str) -> np.ndarray:
        p = pipeline.predict_proba(with_decision(model_inputs(evaluation, spec), decision))[:, 1]
        return np.log(p / (1 - p))
    return log_odds(spec.positive_decision) - log_odds(spec.negative_decision)


def test_incremental_value_threshold_is_the_smallest_uplift_at_or_above_break_even(specs):
    objective = specs["lead_scoring"].objective   # 150 EUR per meeting, 2,500 EUR per conversion: 0.06
    uplift = np.array([0.30, 0.10, 0.07, 0.061, 0.059, 0.02, -0.01])
    choice = incremental_value_threshold(uplift, objective, weeks=1.0)
    assert choice.threshold == pytest.approx(0.061)
    assert choice.positive_share == pytest.approx(4 / 7)
    assert choice.objective_value == pytest.approx(2500 * (0.30 + 0.10 + 0.07 + 0.061) - 4 * 150)
    capped = incremental_value_threshold(uplift, dataclasses.replace(objective, weekly_capacity=2), weeks=1.0)
    assert capped.threshold == pytest.approx(0.10)


def test_a_category_the_champion_never_saw_is_decided_by_the_cold_start_rule(constructed):
    from models.registry import LoadedModel
    from models.support import RULE_THRESHOLD, unseen_rows

    spec, split, evaluation, _ = constructed
    trained = fit_model(split, spec)
    model = LoadedModel(spec.name, "1", trained.estimator, trained.threshold.threshold, "", trained.thresholds)
    entities = evaluation.drop("decision").head(2000).with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("lead_marketplace")).otherwise(pl.col("source")).alias("source"))
    new = (entities["source"] == "lead_marketplace").to_numpy()
    np.testing.assert_array_equal(unseen_rows(trained.estimator, entities, spec), new)

    actions = Policy(spec, model).decide(entities, KEY)
    rule = Policy(spec).decide(entities, KEY)
    ruled, modelled = actions.filter(pl.Series(new)), actions.filter(pl.Series(~new))
    # The rule's decisions, scores and exploration (all its decisions explore) on the new source's rows ...
    assert ruled["decision"].to_list() == rule.filter(pl.Series(new))["decision"].to_list()
    assert set(ruled["score"]) <= {0.0, 1.0} and (ruled["threshold"] == RULE_THRESHOLD).all()
    assert (ruled["propensity"] < 1).all()
    # ... the champion's on the others, and on all rows when the spec lets the champion extrapolate.
    assert (modelled["threshold"] == trained.threshold.threshold).all()
    np.testing.assert_allclose(modelled["score"].to_numpy(), predict_scores(trained.estimator, entities.filter(pl.Series(~new)), spec))
    extrapolating = Policy(dataclasses.replace(spec, new_categories="model"), model).decide(entities, KEY)
    assert (extrapolating["threshold"] == trained.threshold.threshold).all()
    # The demo's and benchmark's frozen baseline is the champion as a plain deployment: it extrapolates too.
    frozen = Policy(spec, model, SafeMode(frozenset({("source", "referral")}))).frozen()
    assert frozen.model is model and not frozen.safe_mode.segments and not frozen.ruled_rows(entities).any()


def test_a_category_too_rare_in_the_fit_slice_to_be_learned_counts_as_unseen(constructed):
    from models.registry import LoadedModel
    from models.support import RULE_THRESHOLD, seen_categories, unseen_rows

    spec, split, evaluation, _ = constructed
    entities = evaluation.drop("decision").head(400).with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("lead_marketplace")).otherwise(pl.col("source")).alias("source"))
    new = (entities["source"] == "lead_marketplace").to_numpy()

    def fitted_with_marketplace_rows(count: int):
        fit = split.fit.with_columns(pl.when(pl.int_range(pl.len()) < count).then(pl.lit("lead_marketplace"))
                                     .otherwise(pl.col("source")).alias("source"))
        return fit_model(dataclasses.replace(split, fit=fit), spec).estimator

    # Below the encoder's min_frequency (20) the value shares the "infrequent" coefficient with other rare
    # values: the rule decides it, as if the model had never seen it ...
    rare = fitted_with_marketplace_rows(5)
    assert "lead_marketplace" not in seen_categories(rare, spec)["source"]
    np.testing.assert_array_equal(unseen_rows(rare, entities, spec), new)
    model = LoadedModel(spec.name, "1", rare, 0.06, "")
    decided = Policy(spec, model).decide(entities, KEY)
    assert (decided.filter(pl.Series(new))["threshold"] == RULE_THRESHOLD).all()
    assert (decided.filter(pl.Series(~new))["threshold"] == 0.06).all()
    # ... with enough rows it has its own coefficient and the model decides it.
    learned = fitted_with_marketplace_rows(200)
    assert "lead_marketplace" in seen_categories(learned, spec)["source"]
    assert not unseen_rows(learned, entities, spec).any()


def test_calibration_leaves_out_rows_of_a_category_the_fit_slice_never_saw(specs):
    """A new lead source reaches the calibration slice before the fit slice. Its leads look hotter than any
    (bot-driven engagement) and almost never convert; the rule decides them, not the model. Calibrated on
    them, the calibrator learns to squash every high score; left out, the model stays calibrated where it decides."""
    from models.support import rows_the_model_decides

    spec = _with_rule_share(specs["lead_scoring"], 0.05)
    world = World(WorldConfig(seed=5, leads_per_week=5000, lead_source_drift_week=2), {**specs, "lead_scoring": spec})
    weeks = [_logged_week(world, spec, w) for w in range(4)]
    split = Split(fit=pl.concat(weeks[:2]), calibration=weeks[2], test=weeks[3])
    assert (split.calibration["source"] == "lead_marketplace").mean() > 0.2
    population = world.population("lead_scoring", 10).filter(pl.col("source") != "lead_marketplace")
    meeting = pl.Series("decision", ["propose_meeting"] * population.height)
    truth = world.true_probability("lead_scoring", population, meeting).to_numpy()
    rows = population.rename({"arrived_at": "decided_at"}).with_columns(meeting)

    def error(model_spec) -> float:
        estimator = fit_model(split, model_spec).estimator
        return float(np.abs(outcome_probability(estimator, rows, model_spec) - truth).mean())

    leaving_out, calibrating_on_all = error(spec), error(dataclasses.replace(spec, new_categories="model"))
    assert leaving_out < 0.5 * calibrating_on_all
    # Left out means exactly that: the same model as one calibrated on a slice without the new source.
    fitted = fit_model(split, spec).estimator
    known = split.calibration.filter(pl.col("source") != "lead_marketplace")
    assert rows_the_model_decides(fitted, split.calibration, spec).height == known.height
    np.testing.assert_allclose(outcome_probability(fit_model(dataclasses.replace(split, calibration=known), spec).estimator,
                                                   rows, spec),
                               outcome_probability(fitted, rows, spec))


def test_a_first_model_that_would_change_many_of_the_rules_decisions_waits_for_a_person(constructed):
    """A first model is held to a flip limit against the cold-start rule, as a challenger is against the champion:
    a first model fit on the rule's logs alone can extrapolate the meeting's effect far from the truth."""
    from models.evaluation import compare_with_champion
    from models.registry import LoadedModel

    spec, split, _, _ = constructed
    trained = fit_model(split, spec)
    challenger = LoadedModel(spec.name, "1", trained.estimator, trained.threshold.threshold, "", trained.thresholds)
    recent = split.test
    # What the rule and the model decide without exploration, from the rule's own conditions and the model's scores.
    rule_meets = recent.select(pl.col("source").is_in(["referral", "trade_fair"]) | pl.col("requested_demo")).to_series()
    model_meets = pl.Series(predict_scores(trained.estimator, recent, spec) >= trained.thresholds.for_rows(recent))
    flips = float((rule_meets != model_meets).mean())
    assert 0.02 < flips < 0.98

    def compared(limit: float | None):
        gates = dataclasses.replace(spec.gates, first_model_max_flip_share=limit, min_auc=0.5, max_calibration_error=1.0)
        return compare_with_champion(dataclasses.replace(spec, gates=gates), trained, split, None, recent, challenger)

    waiting = compared(flips - 0.01)
    assert waiting.flip_share == pytest.approx(flips)
    assert waiting.decision.action == "await_approval"
    assert "of the cold-start rule's recent decisions would flip" in waiting.decision.reasons[-1]
    assert compared(flips + 0.01).decision.action == "promote"
    # Without a limit the first model is not measured against the rule at all (the reply spec: its rule sends
    # every draft to a person, so any first model changes most of its decisions).
    unlimited = compared(None)
    assert unlimited.decision.action == "promote" and unlimited.flip_share is None
