"""Monitoring windows: the champion's training window (reference) and the most recent week (current)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from features.spec import ModelSpec
from features.store import EventStore
from features.training_set import _utc, mature, positive_within, with_labels


def outcome_horizon_days(spec: ModelSpec) -> int:
    """Label age at which outcome rates are compared: a week, or the maturity window if shorter."""
    return min(spec.outcomes.maturity_days, 7)


def window(store: EventStore, spec: ModelSpec, start: datetime, end: datetime, as_of: datetime) -> pl.DataFrame:
    """Actions decided in [start, end) with `outcome` = positive within the horizon (null while too young)."""
    complete = store.complete_ingests()
    return window_of(store.scan_actions(spec.name, complete), store.scan_outcomes(complete), spec, start, end, as_of)


def window_of(actions: pl.LazyFrame, outcomes: pl.LazyFrame, spec: ModelSpec, start: datetime, end: datetime,
              as_of: datetime) -> pl.DataFrame:
    """``window`` on any action and outcome frames (the benchmark keeps its logs in memory)."""
    aged = positive_within(actions, outcomes, spec, as_of, outcome_horizon_days(spec)).select("action_id", "outcome")
    return (actions.filter((pl.col("decided_at") >= _utc(start)) & (pl.col("decided_at") < _utc(end)))
            .join(aged, on="action_id", how="left").collect())


def pattern_bounds(spec: ModelSpec, as_of: datetime, reference_end: datetime,
                   reference_days: int = 28) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
    """(reference, current) bounds of the pattern report: see ``pattern_windows``."""
    end = as_of - timedelta(days=outcome_horizon_days(spec))
    current = (end - timedelta(days=7), end)
    # A champion trained less than a label horizon and a week ago has the current window inside its training
    # window; compared with itself, a segment never falls (and a new one counts as its own reference).
    reference_end = min(reference_end, current[0])
    return (reference_end - timedelta(days=reference_days), reference_end), current


def drift_windows(store: EventStore, spec: ModelSpec, as_of: datetime, reference_end: datetime,
                  current_days: int = 7, reference_days: int = 28) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The reference (the champion's training window) and the recent actions the trigger cuts into
    weekly windows. ``current_days`` covers all of them (``7 * trigger_n``): they come from the
    stored rows as of now, not from past monitor runs, so a backlog of missed weeks leaves no holes."""
    reference = window(store, spec, reference_end - timedelta(days=reference_days), reference_end, as_of)
    current = window(store, spec, as_of - timedelta(days=current_days), as_of, as_of)
    return reference, current


def pattern_windows(store: EventStore, spec: ModelSpec, as_of: datetime, reference_end: datetime,
                    reference_days: int = 28) -> tuple[pl.DataFrame, pl.DataFrame, tuple[datetime, datetime]]:
    """The pattern report's reference (the champion's training window) and current window, and the latter's bounds.

    Current = the latest 7 days whose rows all reached the label age: [as_of - horizon - 7d, as_of - horizon),
    so every row in it is labelled at the same age as the reference's. The reference is the ``reference_days``
    before the champion's as-of, or before the current window where that starts earlier: the two never overlap.
    """
    (ref_start, ref_end), (start, end) = pattern_bounds(spec, as_of, reference_end, reference_days)
    return window(store, spec, ref_start, ref_end, as_of), window(store, spec, start, end, as_of), (start, end)


def as_known_at(frame: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Only rows the store had received by ``as_of``: filtering the current tables rebuilds a past view."""
    return frame.filter(pl.col("ingested_at") <= _utc(as_of))


def labelled_frame(store: EventStore, spec: ModelSpec, as_of: datetime) -> pl.DataFrame:
    """All mature labelled actions known at ``as_of``, oldest first, from one snapshot of the ledger.

    Filtering by decision, observation and ingest time makes the result a function of ``as_of``
    and the tables' rows, so a training set can be rebuilt later and checked against its digest.
    """
    complete = store.complete_ingests()
    actions = as_known_at(store.scan_actions(spec.name, complete), as_of)
    outcomes = as_known_at(store.scan_outcomes(complete), as_of)
    return mature(with_labels(actions, outcomes, spec, as_of)).sort("decided_at", "action_id").collect()


def labelled_between(store: EventStore, spec: ModelSpec, start: datetime, end: datetime, as_of: datetime) -> pl.DataFrame:
    """Mature labelled actions decided in [start, end) that the store had by ``as_of`` (the labels of ``labelled_frame``)."""
    complete = store.complete_ingests()
    actions = as_known_at(store.scan_actions(spec.name, complete), as_of).filter(
        (pl.col("decided_at") >= _utc(start)) & (pl.col("decided_at") < _utc(end)))
    outcomes = as_known_at(store.scan_outcomes(complete), as_of)
    return mature(with_labels(actions, outcomes, spec, as_of)).sort("decided_at", "action_id").collect()


@dataclass(frozen=True)
class RebuildCheck:
    frame: pl.DataFrame
    digest: str
    logged_digest: str

    @property
    def matches(self) -> bool:
        return self.digest == self.logged_digest

    def explain(self) -> str:
        if self.matches:
            return f"rebuilt {self.frame.height} rows; digest {self.digest} matches the run's"
        return (f"rebuilt {self.frame.height} rows; digest {self.digest} differs from the run's {self.logged_digest}: "
                "rows were erased (loop forget, retention) or the store lost data since")


def rebuild_training_set(store: EventStore, spec: ModelSpec, lineage: dict) -> RebuildCheck:
    """Rebuild a logged run's training set from the current tables and compare its digest."""
    if lineage["spec_hash"] != spec.content_hash:
        raise ValueError(f"the run used spec {lineage['spec_hash']}, the current spec is {spec.content_hash}")
    frame = labelled_frame(store, spec, datetime.fromisoformat(lineage["as_of"]))
    return RebuildCheck(frame, action_digest(frame.get_column("action_id")), lineage["action_digest"])


def recent_actions(store: EventStore, spec: ModelSpec, as_of: datetime, days: int = 7) -> pl.DataFrame:
    return (as_known_at(store.scan_actions(spec.name), as_of)
            .filter((pl.col("decided_at") > _utc(as_of - timedelta(days=days))) & (pl.col("decided_at") <= _utc(as_of)))
            .collect())


def action_digest(action_ids: pl.Series) -> str:
    """Order-independent digest of the actions a training set used, to check a rebuild against."""
    return hashlib.sha256("\n".join(action_ids.sort().to_list()).encode()).hexdigest()[:16]


def training_lineage(store: EventStore, spec: ModelSpec, labelled: pl.DataFrame, as_of: datetime) -> dict:
    """What a training set was built from: enough to rebuild it by filtering the current tables."""
    versions = store.versions()
    return {
        "as_of": as_of.isoformat(),
        "spec_hash": spec.content_hash,
        "rows": labelled.height,
        "positives": int(labelled.get_column("label").sum()) if labelled.height else 0,
        "data_from": labelled.get_column("decided_at").min().isoformat() if labelled.height else None,
        "data_to": labelled.get_column("decided_at").max().isoformat() if labelled.height else None,
        "action_digest": action_digest(labelled.get_column("action_id")),
        "actions_table_version": versions.get(f"actions/{spec.name}"),
        "outcomes_table_version": versions.get("outcomes"),
        "store_uri": store.uri,
    }
