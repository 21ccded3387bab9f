"""Weekly KPIs per model: the few figures people steer the automations by.

The seed articles ask for efficiency (share of automated steps), quality (acceptance, escalations to
people), speed (time to resolution) and impact (value) measured over weeks rather than against ideal
targets. Per ISO week (Europe/Berlin) of the decision, from the store's actions and outcomes:

- ``actions``: decisions taken that week.
- ``automation_rate``: share of them with the spec's positive decision (auto-sent reply, proposed
  meeting): the work the automation took on.
- ``escalation_rate``: share with the decision the spec's ``[kpis] escalation_decision`` names
  (replies: ``human_review``, a person handles the case); null for a model without one.
- ``positive_outcome_rate``: of the positive decisions, the share whose outcome was positive at mature
  label age (acceptance of auto-sent replies, conversion of proposed meetings). An action's outcome is
  the latest observed within ``maturity_days`` of the decision; none by then counts as negative, as in
  training (features/training_set.py).
- ``median_hours_to_outcome``: median hours from the decision to its first terminal outcome (the case
  was resolved), over the week's actions that got one within ``maturity_days``.
- ``value``: EUR the positive decisions earned as the spec's objective counts them, the formula that
  chooses the threshold (models/thresholds.py): leads ``conversions * value_per_conversion *
  action_effect - meetings * cost_per_action``; replies ``acceptable * value_per_action -
  unacceptable * cost_per_failure``, over the auto-sent replies.

**When a figure is final.** Only whole weeks are reported. The decision figures (``actions``,
``automation_rate``, ``escalation_rate``) are final once the week is over; the outcome figures once
its youngest action is ``maturity_days`` old (``outcomes_final``); before that they are null. Since
only outcomes within ``maturity_days`` of their decision count, a final figure never changes later:
each week is logged once (MLflow step, Evidently snapshot), when it becomes final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from features.clock import BERLIN
from features.spec import ModelSpec, Objective
from features.training_set import _utc, iso_week_expr

DECISION_KPIS = ("actions", "automation_rate", "escalation_rate")
OUTCOME_KPIS = ("positive_outcome_rate", "median_hours_to_outcome", "value")
KPIS = DECISION_KPIS + OUTCOME_KPIS
# Weeks are numbered from this Monday, so the number keeps counting across new years (an MLflow step).
EPOCH_MONDAY = date(1970, 1, 5)
_US_PER_HOUR = 3_600_000_000


def kpi_labels(spec: ModelSpec) -> dict[str, str]:
    """Words for each KPI of this model, for dashboards and artifacts."""
    return {
        "actions": "actions", "automation_rate": f"automation rate ({spec.positive_decision})",
        "escalation_rate": f"escalations to a person ({spec.kpis.escalation_decision})",
        "positive_outcome_rate": spec.kpis.outcome_rate_label,
        "median_hours_to_outcome": "median hours to outcome", "value": "value (EUR)",
    }


def _value(objective: Objective, automated: pl.Expr, success: pl.Expr) -> pl.Expr:
    """EUR per week of the positive decisions, by the spec's objective (the threshold's formula)."""
    hits = (automated & success).sum()
    if objective.kind == "expected_value":
        return hits * objective.value_per_conversion * objective.action_effect - automated.sum() * objective.cost_per_action
    return hits * objective.value_per_action - (automated & ~success).sum() * objective.cost_per_failure


def weekly_kpis(actions: pl.LazyFrame, outcomes: pl.LazyFrame, spec: ModelSpec, as_of: datetime) -> pl.DataFrame:
    """One row per whole week decided before ``as_of``, oldest first (see the module docstring).

    Columns: `week` ('2026-W03'), `week_index` (weeks since 1970-01-05), `week_end` (UTC, Monday 00:00
    Berlin after the week), `outcomes_final`, `automated` (positive decisions), `labelled` (positive
    decisions whose outcome is final) and the KPIs.
    """
    maturity = timedelta(days=spec.outcomes.maturity_days)
    start = pl.col("decided_at").dt.convert_time_zone(BERLIN.key).dt.truncate("1w")
    decided = (actions.filter(pl.col("decided_at") < _utc(as_of))
               .select("action_id", "decided_at", "decision", iso_week_expr("decided_at").alias("week"),
                       start.dt.offset_by("1w").dt.convert_time_zone("UTC").alias("week_end"),
                       ((start.dt.date() - pl.lit(EPOCH_MONDAY)).dt.total_days() // 7).alias("week_index"))
               .filter(pl.col("week_end") <= _utc(as_of)))
    observed = pl.col("observed_at")
    within = (outcomes.filter(observed <= _utc(as_of))
              .join(decided.select("action_id", "decided_at"), on="action_id")
              .filter(observed <= pl.col("decided_at") + maturity)
              .group_by("action_id")
              .agg(pl.col("outcome").sort_by(["observed_at", "outcome"]).last(),
                   observed.filter(pl.col("outcome").is_in(list(spec.outcomes.terminal))).min().alias("resolved_at")))
    automated = pl.col("decision") == spec.positive_decision
    success = pl.col("outcome").is_in(list(spec.outcomes.positive)).fill_null(False)
    escalation = spec.kpis.escalation_decision
    escalated = (pl.col("decision") == escalation).mean() if escalation else pl.lit(None, pl.Float64)
    hours = (pl.col("resolved_at") - pl.col("decided_at")).dt.total_microseconds() / _US_PER_HOUR
    weekly = (decided.join(within, on="action_id", how="left")
              .group_by("week", "week_index", "week_end")
              .agg(pl.len().alias("actions"), automated.sum().alias("automated"),
                   automated.mean().alias("automation_rate"), escalated.alias("escalation_rate"),
                   automated.sum().alias("labelled"), success.filter(automated).mean().alias("positive_outcome_rate"),
                   hours.median().alias("median_hours_to_outcome"),
                   _value(spec.objective, automated, success).cast(pl.Float64).alias("value"))
              .with_columns((pl.col("week_end") + maturity <= _utc(as_of)).alias("outcomes_final")))
    final = pl.col("outcomes_final")
    return (weekly.with_columns(pl.when(final).then(pl.col(c)).alias(c) for c in ("labelled", *OUTCOME_KPIS))
            .select("week", "week_index", "week_end", "outcomes_final", "actions", "automated", "labelled",
                    "automation_rate", "escalation_rate", "positive_outcome_rate", "median_hours_to_outcome", "value")
            .sort("week_index").collect())


@dataclass(frozen=True)
class KpiPoint:
    """One KPI of one week, as an MLflow metric point: step = week index, timestamp = the week's end."""
    key: str
    value: float
    step: int
    timestamp_ms: int


def new_points(kpis: pl.DataFrame, logged: dict[str, set[int]]) -> list[KpiPoint]:
    """The final, non-null KPI values of weeks not yet logged under their key (``logged``: key -> steps)."""
    long = (kpis.with_columns(pl.col(list(KPIS)).cast(pl.Float64))
            .unpivot(index=["week_index", "week_end"], on=list(KPIS), variable_name="key", value_name="figure")
            .filter(pl.col("figure").is_not_null() & pl.col("figure").is_finite()))
    done = pl.DataFrame([(k, s) for k, steps in logged.items() for s in steps], schema={"key": pl.String, "week_index": pl.Int64},
                        orient="row")
    fresh = long.join(done, on=["key", "week_index"], how="anti").sort("week_index", "key")
    return [KpiPoint(row["key"], float(row["figure"]), int(row["week_index"]),
                     int(row["week_end"].timestamp() * 1000)) for row in fresh.iter_rows(named=True)]
