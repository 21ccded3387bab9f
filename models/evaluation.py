"""Challenger versus champion on the same most recent labelled rows, and the promotion decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features.spec import ModelSpec
from features.training_set import Split
from models.bootstrap import choose_blocks
from models.decision_aware import outcome_probability
from models.evaluate import classification_metrics
from models.exploration import positive_probability
from models.gates import (
    Evidence,
    estimate_settings,
    paired_metric_differences,
    weekly_alpha,
)
from models.ope import Difference, OPEResult, estimate, logged_rows, value_difference
from models.policy import Policy
from models.promotion import PromotionDecision, decide_promotion, flip_share
from models.registry import LoadedModel
from models.train import TrainedModel, grades_of


@dataclass(frozen=True)
class Comparison:
    challenger: dict[str, float]
    champion: dict[str, float] | None
    flip_share: float | None
    decision: PromotionDecision
    evidence: Evidence | None = None


METHODS = ("dr", "snips")


def gather_evidence(spec: ModelSpec, test: pl.DataFrame, challenger_scores: np.ndarray,
                    challenger_threshold: float | np.ndarray, champion_scores: np.ndarray | None,
                    champion_threshold: float | np.ndarray | None,
                    challenger_probabilities: np.ndarray | None = None,
                    champion_probabilities: np.ndarray | None = None,
                    compare_metrics: bool = True, outcome_rows: pl.DataFrame | None = None) -> Evidence:
    """Off-policy values of both policies and the paired differences, on the test slice (new to both models).

    ``*_scores`` are what each threshold applies to (the policy); ``*_probabilities`` the outcome
    probabilities the paired AUC and calibration differences compare with labels (default: the scores,
    as for a pooled model). ``outcome_rows`` (older labelled logs) only help fit the doubly robust
    estimator's outcome model (models/ope.py, ``logged_rows``). ``compare_metrics=False`` compares
    values only: the cold-start rule's 0/1 scores are no probabilities to take an AUC or a calibration
    error of.

    The test slice is the most recent labelled weeks: the challenger was neither fit nor calibrated on
    them, so its value there is out of sample. Blocks are weeks if the slice spans >= 4, else entities.
    """
    gates = spec.gates
    alpha = weekly_alpha(gates)
    blocks = choose_blocks(test)
    seed = spec.training.seed
    settings = estimate_settings(gates, seed)
    known = test.get_column("propensity").cast(pl.Float64).fill_nan(None).fill_null(0.0) > 0
    if not known.any():
        # Only an unknown logging policy: nothing can be weighted, so nothing is covered.
        empty = OPEResult(float("nan"), float("nan"), float("nan"), 0.0, 0.0, 0, "dr", test.height, blocks.kind)
        nan = Difference("value_dr", float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), blocks.kind)
        return Evidence(alpha, {"dr": empty}, {}, {"value_dr": nan} if champion_scores is not None else {})
    logged = logged_rows(test, spec, blocks=blocks, outcome_rows=outcome_rows)
    p_challenger = positive_probability(challenger_scores, challenger_threshold, spec)
    challenger_value = {m: estimate(logged, p_challenger, m, **settings) for m in METHODS}
    if champion_scores is None or champion_threshold is None:
        return Evidence(alpha, challenger_value)
    p_champion = positive_probability(champion_scores, champion_threshold, spec)
    champion_value = {m: estimate(logged, p_champion, m, **settings) for m in METHODS}
    differences = {}
    if compare_metrics:
        differences = paired_metric_differences(
            grades_of(test), challenger_scores if challenger_probabilities is None else challenger_probabilities,
            champion_scores if champion_probabilities is None else champion_probabilities,
            blocks, alpha, gates.bootstrap_resamples, seed)
    for m in METHODS:
        differences[f"value_{m}"] = value_difference(logged, p_challenger, p_champion, m, **settings)
    return Evidence(alpha, challenger_value, champion_value, differences)


def compare_with_champion(spec: ModelSpec, trained: TrainedModel, split: Split, champion: LoadedModel | None,
                          recent: pl.DataFrame, challenger: LoadedModel) -> Comparison:
    """Score the champion on the challenger's test slice; measure how many recent decisions would flip.

    Without a champion the incumbent is the spec's cold-start rule. With ``[gates]
    first_model_against_rule`` the first model's policy has to beat the rule's value on the logs too,
    not only clear the absolute gates (a rule can be near the best a model could do, and a first model
    trained on a few weeks can be worse than it). With ``first_model_max_flip_share`` the first model's
    flips are counted against the rule's decisions, as a challenger's are against the champion's.
    """
    champion_metrics = None
    flips = None
    champion_probabilities = None
    against_rule = champion is None and spec.gates.first_model_against_rule
    old = Policy(spec, champion) if champion is not None or against_rule else None
    new = Policy(spec, challenger)
    champion_scores = old.scores(split.test) if old is not None else None
    if champion is not None:
        champion_probabilities = outcome_probability(champion.estimator, split.test, spec)
        champion_metrics = classification_metrics(grades_of(split.test), champion_probabilities)
    if recent.height and (champion is not None or spec.gates.first_model_max_flip_share is not None):
        # A first model is measured against the cold-start rule's decisions on the same rows.
        incumbent = old if old is not None else Policy(spec)
        flips = flip_share(incumbent.decisions(incumbent.scores(recent), recent), new.decisions(new.scores(recent), recent))
    # Each row at its segment's threshold: the policies as they would decide.
    # The challenger's policy as it would decide (the rule where it never saw a category), not only its model's scores.
    evidence = gather_evidence(spec, split.test, new.scores(split.test), new.thresholds(split.test), champion_scores,
                               old.thresholds(split.test) if old is not None else None, trained.test_scores,
                               champion_probabilities,
                               compare_metrics=champion is not None,
                               outcome_rows=pl.concat([split.fit, split.calibration], how="diagonal_relaxed"))
    decision = decide_promotion(spec.gates, trained.test_metrics, champion_metrics, split.test.height, flips, evidence)
    return Comparison(trained.test_metrics, champion_metrics, flips, decision, evidence)


def comparison_table(comparison: Comparison) -> list[dict[str, object]]:
    """Rows for a Prefect table artifact: one per metric."""
    rows = []
    for metric in ("roc_auc", "average_precision", "brier", "log_loss", "calibration_error", "rows"):
        challenger = comparison.challenger.get(metric, np.nan)
        champion = comparison.champion.get(metric, np.nan) if comparison.champion else np.nan
        rows.append({"metric": metric, "challenger": round(float(challenger), 4),
                     "champion": None if not np.isfinite(champion) else round(float(champion), 4)})
    return rows
