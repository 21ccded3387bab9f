"""Decision thresholds chosen on labelled data by the spec's business objective.

Decisions are ``positive iff score >= threshold``. Candidates are the distinct scores, so ties
(isotonic calibration makes many) are decided together, as they will be in production.

Labels may be grades in [0, 1] (graded outcomes): "hits" are then sums of grades, and the precision
target reads "graded acceptance of the positive decisions >= target".

A precision-type target is met by the **lower confidence bound** of the acceptance above the threshold
(one-sided Wilson score bound at the spec's ``acceptance_confidence``), not by the point estimate: the
lowest threshold whose point estimate just reaches the target on the rows it was chosen on falls short
of it on new rows about half the time. For grades the bound uses the grade's mean as the rate and the
rows as the count; a variable in [0, 1] with mean p varies at most as much as a 0/1 one with mean p
(Var <= p(1 - p)), so the bound stays conservative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from statistics import NormalDist

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


def wilson_lower(hits: pl.Expr, rows: pl.Expr, confidence: float) -> pl.Expr:
    """One-sided Wilson score lower bound of the rate hits / rows at ``confidence`` (0: the point estimate)."""
    rate = hits / rows
    if confidence <= 0:
        return rate
    z = NormalDist().inv_cdf(confidence)
    z2 = z * z
    centre = rate + z2 / (2 * rows)
    spread = z * (rate * (1 - rate) / rows + z2 / (4 * rows * rows)).clip(lower_bound=0).sqrt()
    return (centre - spread) / (1 + z2 / rows)


def precision_target_threshold(scores: np.ndarray, labels: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    """The lowest threshold whose positive decisions are acceptable at least ``target_acceptance`` of the time,
    judged by the lower confidence bound of that acceptance when the spec sets ``acceptance_confidence``."""
    confidence = objective.acceptance_confidence
    table = _by_distinct_score(scores, labels).with_columns(
        (pl.col("cum_hits") / pl.col("positives")).alias("acceptance"),
        wilson_lower(pl.col("cum_hits"), pl.col("positives"), confidence).alias("acceptance_low"))
    table = table.with_columns(
        (pl.col("cum_hits") * objective.value_per_action
         - (pl.col("positives") - pl.col("cum_hits")) * objective.cost_per_failure).alias("objective"))
    ok = table.filter((pl.col("acceptance_low") >= objective.target_acceptance)
                      & (pl.col("positives") >= objective.min_auto_sent))
    curve = table.select(pl.col("score").alias("threshold"), "positives", "objective", "acceptance", "acceptance_low")
    n = len(scores)
    judged = f"its {confidence:.0%} lower bound" if confidence > 0 else "it"
    if ok.is_empty():
        return ThresholdChoice(1.0, 0.0, 0.0, curve,
                               f"no threshold keeps acceptance >= {objective.target_acceptance} ({judged}) on "
                               f">= {objective.min_auto_sent} rows")
    best = ok.sort("score").row(0, named=True)
    bound = f" (Wilson {confidence:.0%} lower bound {best['acceptance_low']:.3f})" if confidence > 0 else ""
    return ThresholdChoice(float(best["score"]), float(best["objective"]) / max(weeks, 1e-9), best["positives"] / n, curve,
                           f"lowest threshold with acceptance {best['acceptance']:.3f}{bound} >= {objective.target_acceptance}")


def choose_threshold(scores: np.ndarray, labels: np.ndarray, objective: Objective, weeks: float) -> ThresholdChoice:
    if len(scores) == 0:
        raise ValueError("cannot choose a threshold on zero rows")
    if objective.kind == "expected_value":
        return expected_value_threshold(scores, labels, objective, weeks)
    return precision_target_threshold(scores, labels, objective, weeks)


@dataclass(frozen=True)
class SegmentThresholds:
    """The thresholds a version decides with: one per segment of ``column``, ``default`` for the rest.

    Versioned with the model: the registered version's tags (``threshold`` = default, ``segment_column``,
    ``segment_thresholds`` as JSON) and a ``thresholds.json`` artifact of its run.
    """
    default: float
    column: str = ""
    by_segment: dict[str, float] = field(default_factory=dict)

    def for_rows(self, frame: pl.DataFrame) -> np.ndarray:
        """The threshold of each row of ``frame`` (which holds ``column`` when there are segments)."""
        if not self.column or not self.by_segment:
            return np.full(frame.height, self.default)
        return (frame.get_column(self.column).cast(pl.String)
                .replace_strict(self.by_segment, default=self.default, return_dtype=pl.Float64).to_numpy())

    def to_json(self) -> str:
        return json.dumps({"default": self.default, "column": self.column, "by_segment": self.by_segment}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SegmentThresholds:
        raw = json.loads(text)
        return cls(float(raw["default"]), raw.get("column", ""), {k: float(v) for k, v in raw.get("by_segment", {}).items()})
