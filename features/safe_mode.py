"""The safe-mode table: which segments of a model are held at the safe decision, since when, by whom and why.

Append-only, like the audit table: a segment enters (the weekly pattern report flagged it) and is
cleared (a person ran ``loop clear``); its state is its latest event. Every change also goes to the
audit table, so `loop status` shows it with the promotions. Changes happen under the store's write
lock, and the events carry a sequence number (a simulated clock gives many events one instant).
Segments are category values (``template_id=ret_v2``), never personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from features.contract import UTC_TIME
from features.store import EventStore

SAFE_MODE_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(), "model": pl.String(), "column": pl.String(), "value": pl.String(),
    "event": pl.String(),        # entered / cleared
    "at": UTC_TIME, "actor": pl.String(), "reason": pl.String(), "week": pl.String(), "recorded_at": UTC_TIME,
}
ENTERED, CLEARED = "entered", "cleared"


class SafeModeError(ValueError):
    """A change that does not fit the table's state (clearing a segment that is not held)."""


@dataclass(frozen=True)
class Segment:
    column: str
    value: str
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.column}={self.value}"


def parse_segment(text: str) -> tuple[str, str]:
    """``"template_id=ret_v2"`` -> ("template_id", "ret_v2")."""
    column, sep, value = text.partition("=")
    if not sep or not column or not value:
        raise SafeModeError(f"a segment is COLUMN=VALUE (e.g. template_id=ret_v2), not {text!r}")
    return column.strip(), value.strip()


def _uri(store: EventStore) -> str:
    return f"{store.uri}/safe_mode"


def history(store: EventStore, model: str | None = None) -> pl.DataFrame:
    """Every event, oldest first."""
    rows = store._scan(_uri(store), SAFE_MODE_SCHEMA)
    if model is not None:
        rows = rows.filter(pl.col("model") == model)
    return rows.sort("seq").collect()


def active(store: EventStore, model: str | None = None) -> pl.DataFrame:
    """Segments held now: model, column, value and the event that put each there (since, actor, reason, week)."""
    latest = history(store, model).group_by("model", "column", "value").agg(pl.all().sort_by("seq").last())
    return (latest.filter(pl.col("event") == ENTERED)
            .select("model", "column", "value", pl.col("at").alias("since"), "actor", "reason", "week")
            .sort("model", "column", "value"))


def _append(store: EventStore, rows: list[dict], now: datetime) -> None:
    """Append events and their audit rows; the caller holds the write lock, so sequence numbers are unique."""
    first = history(store).height + 1
    frame = pl.DataFrame([{**row, "seq": first + i, "at": now, "recorded_at": datetime.now(UTC)} for i, row in enumerate(rows)],
                         schema=SAFE_MODE_SCHEMA)
    store._append(_uri(store), frame, SAFE_MODE_SCHEMA)
    store.append_audit(frame.select(
        "at", "model", pl.lit("").alias("version"), pl.format("safe_mode_{}", "event").alias("event"), "actor",
        pl.format("{}={}: {}", "column", "value", "reason").alias("reasons"), "week", "recorded_at"))


def enter(store: EventStore, model: str, segments: list[Segment], now: datetime, actor: str = "loop",
          week: str = "") -> list[Segment]:
    """Hold these segments; returns the ones newly held (a segment already held is left as it is)."""
    with store.writer():
        held = active(store, model).select("column", "value").rows()
        new = [s for s in segments if (s.column, s.value) not in set(held)]
        if new:
            _append(store, [{"model": model, "column": s.column, "value": s.value, "event": ENTERED, "actor": actor,
                             "reason": s.reason, "week": week} for s in new], now)
    return new


def clear(store: EventStore, model: str, column: str, value: str, by: str, reason: str, now: datetime,
          week: str = "") -> None:
    """A person lifts safe mode for one segment."""
    with store.writer():
        held = active(store, model).filter((pl.col("column") == column) & (pl.col("value") == value))
        if held.is_empty():
            others = ", ".join(f"{c}={v}" for c, v in active(store, model).select("column", "value").rows()) or "none"
            raise SafeModeError(f"{model} segment {column}={value} is not in safe mode (held: {others})")
        _append(store, [{"model": model, "column": column, "value": value, "event": CLEARED, "actor": by,
                         "reason": reason or "cleared", "week": week}], now)
