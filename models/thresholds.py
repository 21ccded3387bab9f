"""Decision thresholds chosen on labelled data by the spec's business objective.

Decisions are ``positive iff score >= threshold``. Candidates are the distinct scores, so ties
(isotonic calibration makes many) are decided together, as they will be in production.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features.spec import Objective


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    objective_value: float       # EUR per week on the data it was chosen on
    positive_share: float        # share of rows that get the positive decision
    curve: pl.DataFrame          # threshold, positives, objective (for the threshold plot)
    reason: str


def _by_distinct_score(scores: np.ndarray, labels: np.ndarray) -> pl.DataFrame:
    """Distinct scores, descending, with the cumulative positives and rows at or above each."""
    frame = pl.DataFrame({"score": np.asarray(scores, float), "label": np.asarray(labels, float)})
    return (frame.group_by("score").agg(pl.len().alias("n"), pl.col("label").sum().alias("hits"))
            .sort("score", descending=True)
            .with_columns(pl.col("n").cum_sum().alias("positives"), pl.col("hits").cum_sum().alias("cum_hits")))


def expected_value_threshold(scores: np.ndarray, labels: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    """Maximise realised value: each positive decision earns value*effect if the outcome is positive and costs cost_per_action."""
    gain = objective.value_per_conversion * objective.action_effect
    table = _by_distinct_score(scores, labels).with_columns(
        (pl.col("cum_hits") * gain - pl.col("positives") * objective.cost_per_action).alias("objective"))
    if objective.weekly_capacity:
        table = table.filter(pl.col("positives") <= objective.weekly_capacity * max(weeks, 1e-9))
    n = len(scores)
    if table.is_empty() or table["objective"].max() <= 0:
        return ThresholdChoice(1.0, 0.0, 0.0, table.select("score", "positives", "objective").rename({"score": "threshold"}),
                               "no threshold earns a positive value: take the positive decision for nobody")
    best = table.row(table["objective"].arg_max(), named=True)
    return ThresholdChoice(float(best["score"]), float(best["objective"]) / max(weeks, 1e-9), best["positives"] / n,
                           table.select(pl.col("score").alias("threshold"), "positives", "objective"),
                           f"maximises value: {best['positives']} of {n} rows get the positive decision")


def incremental_value_threshold(uplift: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    """Act where the action's expected gain ``value · Δp`` exceeds its cost, Δp = P(+ | act) − P(+ | don't).

    With calibrated Δp the expected value of acting on the rows at or above a threshold is
    ``Σ (value · Δp − cost)``, largest at the break-even ``cost / value``; a weekly capacity keeps
    only the rows with the largest Δp. The curve is the model's expected value (the realised one
    needs the other decision's outcome, which off-policy evaluation estimates before promotion).
    """
    frame = pl.DataFrame({"score": np.asarray(uplift, float)})
    table = (frame.group_by("score").agg(pl.len().alias("n")).sort("score", descending=True)
             .with_columns(pl.col("n").cum_sum().alias("positives"),
                           (pl.col("n") * (pl.col("score") * objective.value_per_conversion - objective.cost_per_action))
                           .cum_sum().alias("objective")))
    if objective.weekly_capacity:
        table = table.filter(pl.col("positives") <= objective.weekly_capacity * max(weeks, 1e-9))
    curve = table.select(pl.col("score").alias("threshold"), "positives", "objective")
    n = len(uplift)
    if table.is_empty() or table["objective"].max() <= 0:
        return ThresholdChoice(1.0, 0.0, 0.0, curve, "no row's expected gain from the action covers its cost")
    best = table.row(table["objective"].arg_max(), named=True)
    return ThresholdChoice(float(best["score"]), float(best["objective"]) / max(weeks, 1e-9), best["positives"] / n, curve,
                           f"act where value x incremental probability >= cost: {best['positives']} of {n} rows "
                           f"(break-even {objective.cost_per_action / objective.value_per_conversion:.3f})")


def precision_target_threshold(scores: np.ndarray, labels: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    """The lowest threshold whose positive decisions are still acceptable at least ``target_acceptance`` of the time."""
    table = _by_distinct_score(scores, labels).with_columns(
        (pl.col("cum_hits") / pl.col("positives")).alias("acceptance"))
    table = table.with_columns(
        (pl.col("cum_hits") * objective.value_per_action
         - (pl.col("positives") - pl.col("cum_hits")) * objective.cost_per_failure).alias("objective"))
    ok = table.filter((pl.col("acceptance") >= objective.target_acceptance) & (pl.col("positives") >= objective.min_auto_sent))
    curve = table.select(pl.col("score").alias("threshold"), "positives", "objective", "acceptance")
    n = len(scores)
    if ok.is_empty():
        return ThresholdChoice(1.0, 0.0, 0.0, curve,
                               f"no threshold keeps acceptance >= {objective.target_acceptance} on >= {objective.min_auto_sent} rows")
    best = ok.sort("score").row(0, named=True)
    return ThresholdChoice(float(best["score"]), float(best["objective"]) / max(weeks, 1e-9), best["positives"] / n, curve,
                           f"lowest threshold with acceptance {best['acceptance']:.3f} >= {objective.target_acceptance}")


def choose_threshold(scores: np.ndarray, labels: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    if len(scores) == 0:
        raise ValueError("cannot choose a threshold on zero rows")
    if objective.kind == "expected_value":
        return expected_value_threshold(scores, labels, objective, weeks)
    return precision_target_threshold(scores, labels, objective, weeks)
