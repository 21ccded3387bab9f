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
    return (outcomes.filter(pl.col("observed_at") <= _utc(as_of))
            .sort("observed_at")
            .group_by("action_id")
            .agg(pl.col("outcome").last(), pl.col("observed_at").last().alias("outcome_at"),
                 pl.col("revenue").last()))


def with_labels(actions: pl.LazyFrame, outcomes: pl.LazyFrame, spec: ModelSpec, as_of: datetime) -> pl.LazyFrame:
    """Actions decided up to ``as_of`` with `label` (1/0, null while immature), `week` and the latest outcome."""
    maturity = timedelta(days=spec.outcomes.maturity_days)
    latest = latest_outcomes(outcomes, as_of)
    outcome = pl.col("outcome")
    label = (pl.when(outcome.is_in(list(spec.outcomes.positive))).then(1)
             .when(outcome.is_in(list(spec.outcomes.terminal))).then(0)
             .when(pl.col("decided_at") <= _utc(as_of - maturity)).then(0)
             .otherwise(None).cast(pl.Int8))
    return (actions.filter(pl.col("decided_at") <= _utc(as_of))
            .join(latest, on="action_id", how="left")
            .with_columns(label.alias("label"), iso_week_expr("decided_at").alias("week")))


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
