"""When to retrain: drift in k of the last n weekly windows, or drift with a KPI drop, net of the
shift the loop caused itself. Pure functions (DataFrames in, dataclasses out); the monitor flow
only loads the data and calls `evaluate_trigger`.

**Windows.** Window i (0 = latest) holds the actions decided in [as_of - (i+1)*7d, as_of - i*7d).
They are cut from the stored rows as of the given date, not taken from a history of past monitor
runs, so after a backlog of missed weeks the last n windows still all exist: the count has no holes.
Each window is compared with the reference (the champion's training window).

**Outside drift in a window** (what counts towards the trigger):
- features: Evidently with the spec's fixed methods, share of drifted features >= `drift_share`
  (a category never seen in the reference always counts);
- score: both windows re-scored by the current champion, so the score moves only when the
  features do; a new model or threshold cannot move it;
- outcome rate at equal label age: the change beyond `outcome_rate_tolerance` that is left after
  removing the part the loop caused itself (below).

**The shift the loop caused itself.** Features are recorded before the decision, so a new policy
version (champion version and threshold; every action carries `model_version` and `threshold`)
cannot move them. It moves the decision mix (which leads get a meeting, which replies are
auto-sent) and, because outcomes depend on the decision (a meeting raises conversion; an auto-sent
reply is judged by a later, different signal than a reviewed one), the outcome rate. When the set
of policy versions in a window differs from the reference's, the change of the outcome rate over
labelled rows is split, with d = decision, share = share of labelled rows, rate = positive share:

    change = sum_d (share_cur(d) - share_ref(d)) * rate_ref(d)    self-caused: the new mix at the old rates
           + sum_d share_cur(d) * (rate_cur(d) - rate_ref(d))     outside: the rates per decision moved

and only the outside part counts. A policy version counts for a window when it decided at least
`POLICY_MIN_SHARE` of the window's rows (a few actions at a window's edge are not a policy change).
Limits, plainly: with no policy change nothing is self-caused (a mix that moves under an unchanged
policy moves because the inputs did). When a window takes a decision the reference took on fewer
than `kpi_min_rows` labelled rows (the first model auto-sends; the cold-start rule never did), the
old rate of that decision is unknown or too noisy: nothing is attributed to the loop and the whole
change counts as outside (conservative: at worst one retraining too many). When features drift while the policy
changes, the mix change the features caused is attributed to the policy; the feature drift itself
is still counted by the feature and score checks.

**KPI.** The positive-outcome rate at equal label age (conversion for leads, acceptance for
replies) in the most recent window with at least `kpi_min_rows` labelled rows (for leads, whose
label age is 7 days, the latest week is never old enough: that is window 1). A KPI drop is an
outside change (as above) below `-kpi_drop_tolerance`.

**Trigger.** The latest window has outside drift AND (at least `trigger_k` of the last `trigger_n`
windows have it OR the KPI dropped). Suppressed when a model was trained less than
`RETRAIN_COOLDOWN` ago: that retraining already saw the drifted week, and the daily monitor must
not retrain every day of one drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.spec import ModelSpec
from models.drift import OUTCOME_COLUMN, DriftResult, detect_drift

WEEK = timedelta(days=7)
# Six days, not seven: the weekly cycle's previous training is a week old give or take schedule
# jitter and must not suppress this week's trigger; a retraining from the same week must.
RETRAIN_COOLDOWN = timedelta(days=6)
REFERENCE = "reference"
# A policy version that decided less than this share of a window's rows does not make it a different policy.
POLICY_MIN_SHARE = 0.05


def window_bounds(as_of: datetime, n: int) -> list[tuple[datetime, datetime]]:
    """[start, end) of the last n weekly windows, latest first."""
    return [(as_of - (i + 1) * WEEK, as_of - i * WEEK) for i in range(n)]


def assign_windows(frame: pl.DataFrame, as_of: datetime, n: int) -> pl.DataFrame:
    """Rows decided in the n weeks before ``as_of`` with `window` (0 = latest); other rows dropped."""
    week_us = int(WEEK.total_seconds()) * 1_000_000
    age_us = (pl.lit(as_of).cast(pl.Datetime("us", "UTC")) - pl.col("decided_at")).dt.total_microseconds()
    # (age - 1) // week puts an action decided exactly 7 days before as_of into window 0, matching [start, end).
    return (frame.with_columns(((age_us - 1) // week_us).cast(pl.Int32).alias("window"))
            .filter(pl.col("window").is_between(0, n - 1)))


def policy_version() -> pl.Expr:
    """A policy version is the model version together with the threshold it decided with ("v3 @ 0.42", "rule @ 0.5")."""
    version = pl.col("model_version")
    named = pl.when(version.str.contains(r"^\d+$")).then(pl.format("v{}", version)).otherwise(version)
    return pl.format("{} @ {}", named, pl.col("threshold").round(4))


def _policies(frame: pl.DataFrame) -> tuple[str, ...]:
    shares = frame.group_by(policy_version().alias("policy")).agg((pl.len() / frame.height).alias("share"))
    return tuple(sorted(shares.filter(pl.col("share") >= POLICY_MIN_SHARE).get_column("policy").to_list()))


@dataclass(frozen=True)
class PolicyShift:
    reference_policies: tuple[str, ...]
    current_policies: tuple[str, ...]
    positive_share_reference: float        # decision mix over all rows
    positive_share_current: float
    outcome_rate_reference: float | None   # over labelled rows; None without any
    outcome_rate_current: float | None
    self_caused: float | None              # part of the outcome-rate change the new decision mix explains
    outside: float | None                  # the rest: what counts as drift
    note: str

    @property
    def policy_changed(self) -> bool:
        return set(self.reference_policies) != set(self.current_policies)


def _per_decision(frame: pl.DataFrame) -> pl.DataFrame:
    labelled = frame.filter(pl.col(OUTCOME_COLUMN).is_not_null())
    return (labelled.group_by("decision")
            .agg(pl.len().alias("n"), pl.col(OUTCOME_COLUMN).cast(pl.Float64).mean().alias("rate"))
            .with_columns((pl.col("n") / pl.col("n").sum()).alias("share")))


def policy_shift(reference: pl.DataFrame, current: pl.DataFrame, spec: ModelSpec) -> PolicyShift:
    """Split the outcome-rate change between two windows into the self-caused and the outside part
    (see the module docstring for exactly what counts)."""
    policies = {"reference": _policies(reference), "current": _policies(current)}
    positive = {name: float((frame.get_column("decision") == spec.positive_decision).mean() or 0.0)
                for name, frame in (("reference", reference), ("current", current))}
    ref, cur = _per_decision(reference), _per_decision(current)
    base = dict(reference_policies=policies["reference"], current_policies=policies["current"],
                positive_share_reference=positive["reference"], positive_share_current=positive["current"])
    if ref.is_empty() or cur.is_empty():
        return PolicyShift(**base, outcome_rate_reference=None if ref.is_empty() else _rate(ref),
                           outcome_rate_current=None if cur.is_empty() else _rate(cur), self_caused=None, outside=None,
                           note="no labelled rows at equal label age in one of the windows")
    rate_ref, rate_cur = _rate(ref), _rate(cur)
    change = rate_cur - rate_ref
    if set(policies["reference"]) == set(policies["current"]):
        return PolicyShift(**base, outcome_rate_reference=rate_ref, outcome_rate_current=rate_cur, self_caused=0.0,
                           outside=change, note="same policy versions: the whole change is outside")
    joined = cur.join(ref, on="decision", how="full", coalesce=True, suffix="_ref").with_columns(
        pl.col("share", "share_ref").fill_null(0.0))
    unknown = (joined.filter((pl.col("share") > 0) & (pl.col("n_ref").fill_null(0) < spec.drift.kpi_min_rows))
               .get_column("decision").to_list())
    if unknown:
        return PolicyShift(**base, outcome_rate_reference=rate_ref, outcome_rate_current=rate_cur, self_caused=None,
                           outside=change, note=f"decision {', '.join(unknown)} taken on fewer than {spec.drift.kpi_min_rows} "
                                                "labelled reference rows: its old rate is unknown, the whole change counts as outside")
    mix = float(joined.select(((pl.col("share") - pl.col("share_ref")) * pl.col("rate_ref").fill_null(0.0)).sum()).item())
    return PolicyShift(**base, outcome_rate_reference=rate_ref, outcome_rate_current=rate_cur, self_caused=mix,
                       outside=change - mix, note="policy changed: the new decision mix at the old per-decision rates "
                                                  "is self-caused")


def _rate(per_decision: pl.DataFrame) -> float:
    return float(per_decision.select((pl.col("share") * pl.col("rate")).sum()).item())


@dataclass(frozen=True)
class WindowDrift:
    window: int
    start: datetime
    end: datetime
    rows: int
    labelled_rows: int
    drift: DriftResult | None     # None when the window has no rows
    shift: PolicyShift | None
    outcome_outside_drifted: bool
    drifted: bool                 # outside drift: what counts towards the trigger

    def row(self) -> dict[str, Any]:
        """One line of the per-window table (artifact, MLflow)."""
        d, s = self.drift, self.shift
        return {
            "window": self.window, "from": self.start.date().isoformat(), "to": self.end.date().isoformat(),
            "rows": self.rows, "labelled": self.labelled_rows,
            "drifted_features": ",".join(d.drifted_columns) if d else "", "score_drifted": d.score_drifted if d else None,
            "policy_changed": s.policy_changed if s else None,
            "positive_share": s.positive_share_current if s else None,
            "outcome_change": (s.outcome_rate_current - s.outcome_rate_reference
                               if s and s.outcome_rate_current is not None and s.outcome_rate_reference is not None else None),
            "self_caused": s.self_caused if s else None, "outside": s.outside if s else None,
            "outside_drift": self.drifted,
        }


def window_drift(index: int, start: datetime, end: datetime, reference: pl.DataFrame, frame: pl.DataFrame,
                 spec: ModelSpec, html_path: Path | None = None) -> WindowDrift:
    """Drift of one window against the reference, the self-caused part removed from the outcome rate."""
    if frame.is_empty():
        return WindowDrift(index, start, end, 0, 0, None, None, False, False)
    drift = detect_drift(reference, frame, spec, html_path=html_path)
    shift = policy_shift(reference, frame, spec)
    outcome_outside = shift.outside is not None and abs(shift.outside) > spec.drift.outcome_rate_tolerance
    drifted = drift.drifted_share >= spec.drift.drift_share or drift.score_drifted or outcome_outside
    return WindowDrift(index, start, end, frame.height, int(frame.get_column(OUTCOME_COLUMN).is_not_null().sum()),
                       drift, shift, outcome_outside, drifted)


@dataclass(frozen=True)
class KpiCheck:
    window: int | None          # the window that measured it; None: no window had kpi_min_rows labelled rows
    labelled_rows: int
    reference: float | None
    current: float | None
    self_caused: float | None
    outside_change: float | None
    dropped: bool


def kpi_check(windows: Sequence[WindowDrift], spec: ModelSpec) -> KpiCheck:
    """The KPI of the most recent window with enough labelled rows, against the reference."""
    usable = [w for w in windows if w.shift is not None and w.labelled_rows >= spec.drift.kpi_min_rows]
    if not usable:
        return KpiCheck(None, 0, None, None, None, None, False)
    w = min(usable, key=lambda item: item.window)
    s = w.shift
    dropped = s.outside is not None and s.outside < -spec.drift.kpi_drop_tolerance
    return KpiCheck(w.window, w.labelled_rows, s.outcome_rate_reference, s.outcome_rate_current, s.self_caused,
                    s.outside, dropped)


@dataclass(frozen=True)
class TriggerDecision:
    triggered: bool
    reason: str
    drifted_windows: int
    k: int
    n: int
    latest_drifted: bool
    kpi_dropped: bool
    suppressed: bool            # would have triggered, but a recent retraining already answered it


def trigger_decision(drifted: Sequence[bool], kpi_dropped: bool, spec: ModelSpec, as_of: datetime,
                     last_trained: datetime | None = None) -> TriggerDecision:
    """k-of-n: ``drifted[i]`` says whether window i (0 = latest) has outside drift; needs exactly n flags."""
    k, n = spec.drift.trigger_k, spec.drift.trigger_n
    if len(drifted) != n:
        raise ValueError(f"trigger: {len(drifted)} window verdicts given, the spec's trigger_n is {n}")
    count, latest = sum(bool(d) for d in drifted), bool(drifted[0])
    if not latest:
        fires, reason = False, f"no outside drift in the latest window ({count} of the last {n} drifted)"
    elif count >= k:
        fires, reason = True, f"outside drift in {count} of the last {n} weekly windows (need {k}), the latest included"
    elif kpi_dropped:
        fires, reason = True, f"outside drift in the latest window together with a KPI drop ({count} of {n} drifted)"
    else:
        fires, reason = False, f"outside drift in {count} of the last {n} windows (need {k}) and no KPI drop: one noisy week"
    suppressed = fires and last_trained is not None and last_trained > as_of - RETRAIN_COOLDOWN
    if suppressed:
        reason += f"; suppressed: a model was already trained at {last_trained.isoformat()}"
    return TriggerDecision(fires and not suppressed, reason, count, k, n, latest, kpi_dropped, suppressed)


@dataclass(frozen=True)
class TriggerReport:
    windows: tuple[WindowDrift, ...]
    kpi: KpiCheck
    decision: TriggerDecision
    policies: pl.DataFrame      # per window and policy version: rows, positive share, labelled rows, outcome rate

    @property
    def latest(self) -> WindowDrift:
        return self.windows[0]


def policy_table(reference: pl.DataFrame, recent: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    """Rows, decision mix and outcome rate per window and policy version: where the loop moved the mix."""
    frames = pl.concat([reference.select("model_version", "threshold", "decision", OUTCOME_COLUMN)
                        .with_columns(pl.lit(REFERENCE).alias("window")),
                        recent.select("model_version", "threshold", "decision", OUTCOME_COLUMN,
                                      pl.col("window").cast(pl.String))])
    return (frames.group_by("window", policy_version().alias("policy"))
            .agg(pl.len().alias("rows"),
                 (pl.col("decision") == spec.positive_decision).mean().alias("positive_share"),
                 pl.col(OUTCOME_COLUMN).is_not_null().sum().alias("labelled"),
                 pl.col(OUTCOME_COLUMN).cast(pl.Float64).mean().alias("outcome_rate"))
            .sort(pl.col("window") != REFERENCE, "window", "policy"))


def evaluate_trigger(reference: pl.DataFrame, recent: pl.DataFrame, spec: ModelSpec, as_of: datetime,
                     last_trained: datetime | None = None, html_path: Path | None = None) -> TriggerReport:
    """Drift per weekly window, the KPI check and the k-of-n verdict.

    ``reference`` and ``recent`` are action rows with the spec's features, `score` (both scored by
    the same model), `decision`, `model_version`, `threshold` and `outcome` (positive within the
    label horizon, null while too young); ``recent`` covers at least the last n weeks before ``as_of``.
    The Evidently HTML of the latest window goes to ``html_path``.
    """
    n = spec.drift.trigger_n
    recent = assign_windows(recent, as_of, n)
    windows = tuple(window_drift(i, start, end, reference, recent.filter(pl.col("window") == i).drop("window"), spec,
                                 html_path if i == 0 else None)
                    for i, (start, end) in enumerate(window_bounds(as_of, n)))
    kpi = kpi_check(windows, spec)
    decision = trigger_decision([w.drifted for w in windows], kpi.dropped, spec, as_of, last_trained)
    return TriggerReport(windows, kpi, decision, policy_table(reference, recent, spec))
