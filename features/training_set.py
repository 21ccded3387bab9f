"""Training sets from the store: actions joined to their latest outcome, mature labels only.

A label is *mature* when nothing can change it any more: the latest outcome is terminal, or the
maturity window has passed without one (then the action counts as negative). Because actions
carry the features seen at decision time, the join is point-in-time correct by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from features.clock import BERLIN
from features.spec import ModelSpec


def _utc(when: datetime) -> pl.Expr:
    return pl.lit(when).cast(pl.Datetime("us", "UTC"))


def latest_outcomes(outcomes: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """The outcome that counts per action: the latest observed up to ``as_of`` (history stays in the store)."""
    if "share_kept" not in outcomes.collect_schema():   # frames from before graded outcomes
        outcomes = outcomes.with_columns(pl.lit(None, pl.Float64).alias("share_kept"))
    return (outcomes.filter(pl.col("observed_at") <= _utc(as_of))
            .sort("observed_at")
            .group_by("action_id")
            .agg(pl.col("outcome").last(), pl.col("observed_at").last().alias("outcome_at"),
                 pl.col("revenue").last(), pl.col("share_kept").last()))


def grade_expr(spec: ModelSpec) -> pl.Expr:
    """The graded outcome in [0, 1] from `outcome`, `share_kept` and `label` (null while the label is).

    Without ``[outcomes.grades]`` the grade is the binary label. With it, a fixed grade per outcome, or the
    share of the draft kept (``share_kept_default`` when the row does not say); a label that matured without a
    terminal outcome keeps its 0.
    """
    label = pl.col("label").cast(pl.Float64)
    if not spec.outcomes.graded:
        return label.alias("grade")
    fixed = {o: g for o, g in spec.outcomes.grades if not isinstance(g, str)}
    by_share = [o for o, g in spec.outcomes.grades if isinstance(g, str)]
    outcome = pl.col("outcome")
    return (pl.when(label.is_null()).then(None)
            .when(outcome.is_in(by_share)).then(pl.col("share_kept").fill_null(spec.outcomes.share_kept_default).clip(0, 1))
            .when(outcome.is_in(list(fixed))).then(outcome.replace_strict(fixed, default=None, return_dtype=pl.Float64))
            .otherwise(label).alias("grade"))


def with_labels(actions: pl.LazyFrame, outcomes: pl.LazyFrame, spec: ModelSpec, as_of: datetime) -> pl.LazyFrame:
    """Actions decided up to ``as_of`` with `label` (1/0, null while immature), `grade` (in [0, 1], see
    ``grade_expr``), `week` and the latest outcome."""
    maturity = timedelta(days=spec.outcomes.maturity_days)
    latest = latest_outcomes(outcomes, as_of)
    outcome = pl.col("outcome")
    label = (pl.when(outcome.is_in(list(spec.outcomes.positive))).then(1)
             .when(outcome.is_in(list(spec.outcomes.terminal))).then(0)
             .when(pl.col("decided_at") <= _utc(as_of - maturity)).then(0)
             .otherwise(None).cast(pl.Int8))
    return (actions.filter(pl.col("decided_at") <= _utc(as_of))
            .join(latest, on="action_id", how="left")
            .with_columns(label.alias("label"), iso_week_expr("decided_at").alias("week"))
            .with_columns(grade_expr(spec)))


def graded_rows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None]:
    """Rows to fit on, with binary `label`, and their sample weights (None: every grade is 0 or 1).

    A fractional grade g becomes two rows, label 1 with weight g and label 0 with weight 1 - g: the weighted
    log loss of the pair is the cross-entropy against g, so a calibrated model estimates the expected grade,
    the same quantity the threshold objective averages. (Rounding g to a label would throw away how close a
    draft came; one row with weight g would tell the model nothing about the failing part.)
    """
    grade = pl.col("grade")
    if frame.filter((grade > 0) & (grade < 1)).is_empty():
        return frame, None
    expanded = pl.concat([frame.filter(grade > 0).with_columns(pl.lit(1, pl.Int8).alias("label"), grade.alias("__weight")),
                          frame.filter(grade < 1).with_columns(pl.lit(0, pl.Int8).alias("label"),
                                                               (1 - grade).alias("__weight"))])
    return expanded.drop("__weight"), expanded.get_column("__weight")


def iso_week_expr(column: str) -> pl.Expr:
    local = pl.col(column).dt.convert_time_zone(BERLIN.key)
    return pl.format("{}-W{}", local.dt.iso_year(), local.dt.week().cast(pl.String).str.zfill(2))


def mature(labelled: pl.LazyFrame) -> pl.LazyFrame:
    return labelled.filter(pl.col("label").is_not_null())


def positive_within(actions: pl.LazyFrame, outcomes: pl.LazyFrame, spec: ModelSpec, as_of: datetime,
                    horizon_days: int) -> pl.LazyFrame:
    """Actions at least ``horizon_days`` old, with `outcome` = a positive outcome seen within that horizon.

    Comparing this rate between two windows compares outcomes of equal label age, so a recent
    window whose labels are still arriving raises no false alarm.
    """
    horizon = timedelta(days=horizon_days)
    hits = (outcomes.filter(pl.col("outcome").is_in(list(spec.outcomes.positive)) & (pl.col("observed_at") <= _utc(as_of)))
            .join(actions.select("action_id", "decided_at"), on="action_id")
            .filter(pl.col("observed_at") - pl.col("decided_at") <= horizon)
            .select("action_id").unique())
    return (actions.filter(pl.col("decided_at") <= _utc(as_of - horizon))
            .join(hits.with_columns(pl.lit(True).alias("outcome")), on="action_id", how="left")
            .with_columns(pl.col("outcome").fill_null(False)))


@dataclass(frozen=True)
class Split:
    fit: pl.DataFrame
    calibration: pl.DataFrame
    test: pl.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"fit_rows": self.fit.height, "calibration_rows": self.calibration.height, "test_rows": self.test.height}


class NotEnoughData(ValueError):
    """Too few mature labels to train or evaluate; a normal state early on, not a failure."""


def time_split(labelled: pl.DataFrame, spec: ModelSpec) -> Split:
    """Fit on the oldest rows, calibrate on the next, test on the most recent labelled weeks."""
    if labelled.height < spec.training.min_labelled_rows:
        raise NotEnoughData(f"{labelled.height} mature labelled rows, need {spec.training.min_labelled_rows}")
    ordered = labelled.sort("decided_at")
    per_week = ordered.group_by("week").agg(pl.len().alias("rows")).sort("week", descending=True)
    # The most recent weeks hold few mature labels (they are still arriving), so take as many
    # recent whole weeks as it needs to reach the test size, but always leave a week to fit on.
    reached = per_week.with_columns(pl.col("rows").cum_sum().shift(1, fill_value=0).alias("before"))
    test_weeks = reached.filter(pl.col("before") < spec.training.test_rows).head(max(per_week.height - 1, 0)).get_column("week")
    test = ordered.filter(pl.col("week").is_in(test_weeks.implode()))
    rest = ordered.filter(~pl.col("week").is_in(test_weeks.implode()))
    # Calibration takes the rows just before the test weeks, so the fit slice stays as recent as possible.
    n_cal = min(spec.training.calibration_rows, rest.height // 2)
    return Split(fit=rest.head(rest.height - n_cal), calibration=rest.tail(n_cal), test=test)
