"""Monitoring windows: the champion's training window (reference) and the most recent week (current)."""

from __future__ import annotations

import hashlib
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
    actions = store.scan_actions(spec.name)
    aged = positive_within(actions, store.scan_outcomes(), spec, as_of, outcome_horizon_days(spec)).select("action_id", "outcome")
    return (actions.filter((pl.col("decided_at") >= _utc(start)) & (pl.col("decided_at") < _utc(end)))
            .join(aged, on="action_id", how="left").collect())


def drift_windows(store: EventStore, spec: ModelSpec, as_of: datetime, reference_end: datetime,
                  current_days: int = 7, reference_days: int = 28) -> tuple[pl.DataFrame, pl.DataFrame]:
    reference = window(store, spec, reference_end - timedelta(days=reference_days), reference_end, as_of)
    current = window(store, spec, as_of - timedelta(days=current_days), as_of, as_of)
    return reference, current


def labelled_frame(store: EventStore, spec: ModelSpec, as_of: datetime) -> pl.DataFrame:
    """All mature labelled actions up to ``as_of``, oldest first."""
    return mature(with_labels(store.scan_actions(spec.name), store.scan_outcomes(), spec, as_of)).sort("decided_at").collect()


def recent_actions(store: EventStore, spec: ModelSpec, as_of: datetime, days: int = 7) -> pl.DataFrame:
    return (store.scan_actions(spec.name)
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
