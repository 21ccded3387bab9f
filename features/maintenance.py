"""Store maintenance: retention, compaction and vacuum of the Delta tables.

- ``apply_retention`` deletes what is older than the retention period: actions decided before the
  cutoff (with all their outcomes, whenever observed), outcomes observed before it, quarantine rows
  quarantined before it. The audit table is kept: it is model-level history (promotions, approvals,
  rollbacks) without personal data. A Delta delete only marks files as removed; the bytes stay on
  disk (and readable by time travel) until ``vacuum`` has passed the deleted-file retention.
- ``compact`` runs Delta's optimize (bin-packing compaction): many small files from weekly appends
  and merges become a few large ones. The small files are tombstoned, removed later by ``vacuum``.
- ``vacuum`` deletes files that no version within the retention period needs.

Each function returns per-table counts; tables that do not exist yet are skipped.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime

import polars as pl
from deltalake import DeltaTable

from features.store import EventStore

# Delta's default for delta.deletedFileRetentionDuration ("interval 1 week").
DEFAULT_DELETED_FILE_RETENTION_HOURS = 168

_HOURS_PER_UNIT = {"microsecond": 1 / 3_600_000_000, "millisecond": 1 / 3_600_000, "second": 1 / 3600,
                   "minute": 1 / 60, "hour": 1, "day": 24, "week": 168}


def months_before(when: datetime, months: int) -> datetime:
    """The same wall time ``months`` calendar months earlier (the day clamped to the month's end), in UTC."""
    if when.tzinfo is None:
        raise ValueError("months_before needs a timezone-aware datetime")
    if months < 0:
        raise ValueError("months must be >= 0")
    when = when.astimezone(UTC)
    index = when.year * 12 + (when.month - 1) - months
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


def _existing(store: EventStore, names=None) -> dict[str, str]:
    return {name: uri for name, (uri, _, _) in store.tables().items()
            if (names is None or name in names) and DeltaTable.is_deltatable(uri)}


def _literal(when: datetime) -> str:
    return "'" + when.astimezone(UTC).isoformat() + "'"


def apply_retention(store: EventStore, now: datetime, months: int) -> dict[str, int]:
    """Delete rows older than ``now`` minus ``months`` calendar months; returns rows deleted per table.

    Call ``vacuum`` afterwards to remove the deleted rows' files from disk.
    """
    with store.writer():
        return _apply_retention(store, months_before(now, months))


def _apply_retention(store: EventStore, cutoff: datetime) -> dict[str, int]:
    before = _literal(cutoff)
    deleted: dict[str, int] = {}
    action_tables = {f"actions/{m}": m for m in store.specs}

    scans = [pl.scan_delta(uri).filter(pl.col("decided_at") < cutoff).select("action_id")
             for uri in _existing(store, action_tables).values()]
    old_ids = pl.concat(scans).unique().collect() if scans else pl.DataFrame()
    if DeltaTable.is_deltatable(store.outcomes_uri):
        n = int(DeltaTable(store.outcomes_uri).delete(f"observed_at < {before}")["num_deleted_rows"])
        if old_ids.height:
            # Outcomes of old actions, whenever observed: a join-based merge (one commit, no id list).
            metrics = (old_ids.write_delta(store.outcomes_uri, mode="merge", delta_merge_options={
                "predicate": "t.action_id = s.action_id", "source_alias": "s", "target_alias": "t"})
                .when_matched_delete().execute())
            n += int(metrics["num_target_rows_deleted"])
        deleted["outcomes"] = n
    for name, uri in _existing(store, action_tables).items():
        deleted[name] = int(DeltaTable(uri).delete(f"decided_at < {before}")["num_deleted_rows"])
    if DeltaTable.is_deltatable(store.quarantine_uri):
        deleted["quarantine"] = int(DeltaTable(store.quarantine_uri).delete(
            f"quarantined_at < {before}")["num_deleted_rows"])
    return deleted


def compact(store: EventStore) -> dict[str, dict[str, int]]:
    """Delta optimize (compaction) on every existing table; returns files removed/added per table."""
    out = {}
    with store.writer():
        for name, uri in _existing(store).items():
            metrics = DeltaTable(uri).optimize.compact()
            out[name] = {"files_removed": int(metrics.get("numFilesRemoved", 0)),
                         "files_added": int(metrics.get("numFilesAdded", 0))}
    return out


def _hours(interval: str) -> float | None:
    """Hours of a Delta interval such as 'interval 1 week' or 'interval 36 hours'."""
    match = re.fullmatch(r"\s*(?:interval\s+)?(\d+)\s+([a-z]+?)s?\s*", interval.lower())
    if not match or match.group(2) not in _HOURS_PER_UNIT:
        return None
    return int(match.group(1)) * _HOURS_PER_UNIT[match.group(2)]


def deleted_file_retention_hours(table: DeltaTable) -> float:
    """The table's delta.deletedFileRetentionDuration in hours (Delta's default: one week)."""
    configured = table.metadata().configuration.get("delta.deletedFileRetentionDuration")
    hours = _hours(configured) if configured else None
    return DEFAULT_DELETED_FILE_RETENTION_HOURS if hours is None else hours


def vacuum(store: EventStore, retention_hours: int) -> dict[str, int]:
    """Delete files no longer needed by any version younger than ``retention_hours``; files deleted per table.

    Delta refuses a retention below the table's ``delta.deletedFileRetentionDuration`` (one week by
    default) because a reader still on an older version, or a writer that started before the vacuum,
    may need those files. Only when the given retention is below that, the safety check is switched
    off (``enforce_retention_duration=False``): do it when nothing reads or writes the store, and
    expect time travel to versions older than the retention to fail afterwards.
    """
    if retention_hours < 0:
        raise ValueError("retention_hours must be >= 0")
    out = {}
    with store.writer():
        for name, uri in _existing(store).items():
            table = DeltaTable(uri)
            enforce = retention_hours >= deleted_file_retention_hours(table)
            removed = table.vacuum(retention_hours=retention_hours, dry_run=False,
                                   enforce_retention_duration=enforce)
            out[name] = len(removed)
    return out
