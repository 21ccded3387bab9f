"""The week ledger: each model's weekly cycle runs once per ISO week, however often Prefect starts it.

A scheduled run can start twice (a redeploy, an outage backlog). Claiming a week is atomic
across processes (under the store's write lock): the first claim wins, later ones find the week
started, awaiting approval or done and change nothing.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from features.contract import UTC_TIME
from features.store import EventStore

WEEK_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(), "week": pl.String(), "seq": pl.Int64(), "status": pl.String(), "at": UTC_TIME,
    "detail": pl.String(),
}
TERMINAL = ("done", "awaiting_approval")


def _uri(store: EventStore) -> str:
    return f"{store.uri}/weeks"


def _entries(store: EventStore, model: str, week: str) -> pl.DataFrame:
    # Ordered by a sequence number, not by time: a simulated clock gives claim and finish one instant.
    return (store._scan(_uri(store), WEEK_SCHEMA).filter((pl.col("model") == model) & (pl.col("week") == week))
            .sort("seq").collect())


def week_status(store: EventStore, model: str, week: str) -> str | None:
    """The latest status of a model's week, or None if never started."""
    rows = _entries(store, model, week)
    return rows.get_column("status")[-1] if rows.height else None


def _record(store: EventStore, model: str, week: str, status: str, now: datetime, detail: str) -> None:
    """Append an entry; the caller holds the store's write lock, so the sequence number is unique."""
    seq = _entries(store, model, week).height + 1
    store._append(_uri(store), pl.DataFrame([{"model": model, "week": week, "seq": seq, "status": status, "at": now,
                                             "detail": detail}]), WEEK_SCHEMA)


def claim_week(store: EventStore, model: str, week: str, now: datetime) -> tuple[bool, str | None]:
    """Try to start a model's cycle for a week: (claimed, the status found if not)."""
    with store.writer():
        status = week_status(store, model, week)
        if status is not None and status != "failed":
            return False, status
        _record(store, model, week, "started", now, "")
        return True, status


def finish_week(store: EventStore, model: str, week: str, status: str, now: datetime, detail: str = "") -> None:
    """Record how a claimed week ended: done, awaiting_approval, or failed (a later run may retry a failed week)."""
    with store.writer():
        _record(store, model, week, status, now, detail)
