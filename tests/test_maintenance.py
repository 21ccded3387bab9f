"""Retention, compaction and vacuum on a real Delta store filled by the real ingest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from features.clock import SimulatedClock
from features.ingest import ingest_paths
from features.maintenance import apply_retention, compact, months_before, vacuum
from features.store import EventStore
from tests.helpers import lead_action

KEY = b"test-maintenance-key"


@pytest.fixture
def store(tmp_path, specs):
    return EventStore(str(tmp_path / "store"), specs)


def _csv(path: Path, rows: list[dict]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def _disk_files(uri: str) -> set[Path]:
    return {p for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts}


def _current_files(uri: str) -> set[Path]:
    return {Path(u) for u in DeltaTable(uri).file_uris()}


def test_months_before_clamps_to_the_end_of_the_month():
    assert months_before(datetime(2026, 3, 31, 12, tzinfo=UTC), 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert months_before(datetime(2026, 1, 15, tzinfo=UTC), 13) == datetime(2024, 12, 15, tzinfo=UTC)
    assert months_before(datetime(2024, 3, 30, tzinfo=UTC), 1) == datetime(2024, 2, 29, tzinfo=UTC)


def test_retention_drops_old_rows_and_keeps_recent_ones(tmp_path, store):
    # An old ingest (June 2024): two actions, one outcome observed then, one bad row quarantined then.
    old_clock = SimulatedClock(datetime(2024, 6, 30, tzinfo=UTC))
    old = _csv(tmp_path / "old.csv", [lead_action("old-1", decided_at="2024-06-03T10:00:00+02:00"),
                                      lead_action("old-2", decided_at="2024-06-04T10:00:00+02:00"),
                                      lead_action("old-bad", score="7", decided_at="2024-06-04T10:00:00+02:00")])
    old_outcomes = _csv(tmp_path / "old-outcomes.csv", [
        {"action_id": "old-1", "observed_at": "2024-06-20T09:00:00Z", "outcome": "lost"}])
    ingest_paths([old, old_outcomes], store, old_clock, KEY)
    # A recent ingest: two recent actions, their outcomes, a late outcome of an old action, a bad row.
    now = datetime(2026, 2, 1, tzinfo=UTC)
    recent = _csv(tmp_path / "recent.csv", [lead_action("new-1", decided_at="2026-01-05T10:00:00+01:00"),
                                            lead_action("new-2", decided_at="2025-03-02T10:00:00+01:00"),
                                            lead_action("new-bad", score="7")])
    recent_outcomes = _csv(tmp_path / "recent-outcomes.csv", [
        {"action_id": "new-1", "observed_at": "2026-01-20T09:00:00Z", "outcome": "converted"},
        {"action_id": "new-2", "observed_at": "2025-03-20T09:00:00Z", "outcome": "lost"},
        # A late outcome, but of an old action: it goes with its action.
        {"action_id": "old-2", "observed_at": "2025-06-01T09:00:00Z", "outcome": "converted"}])
    ingest_paths([recent, recent_outcomes], store, SimulatedClock(now), KEY)
    store.append_audit(pl.DataFrame([{"at": datetime(2024, 6, 1, tzinfo=UTC), "model": "lead_scoring", "version": "1",
                                      "event": "promoted", "actor": "loop", "reasons": "", "week": "2024-W22"}]))

    deleted = apply_retention(store, now, months=12)   # cutoff 2025-02-01

    assert deleted == {"actions/lead_scoring": 2, "outcomes": 2, "quarantine": 1}
    assert sorted(pl.read_delta(store.actions_uri("lead_scoring"))["action_id"]) == ["new-1", "new-2"]
    assert sorted(pl.read_delta(store.outcomes_uri)["action_id"]) == ["new-1", "new-2"]
    assert [r for r in pl.read_delta(store.quarantine_uri)["raw"] if "old-bad" in r] == []
    assert pl.read_delta(store.quarantine_uri).height == 1
    assert pl.read_delta(store.audit_uri).height == 1     # model-level history is kept
    assert store.scan_actions("lead_scoring").collect().height == 2
    # Running it again finds nothing more.
    assert apply_retention(store, now, months=12) == {"actions/lead_scoring": 0, "outcomes": 0, "quarantine": 0}


def test_compact_merges_small_appends_and_vacuum_removes_old_versions(tmp_path, store):
    clock = SimulatedClock(datetime(2026, 2, 1, tzinfo=UTC))
    for i in range(12):   # twelve ingests, each appending a small file
        ingest_paths([_csv(tmp_path / f"a{i}.csv", [lead_action(f"a{i}")])], store, clock, KEY)
    uri = store.actions_uri("lead_scoring")
    rows_before = pl.read_delta(uri).sort("action_id")
    assert len(_current_files(uri)) == 12

    result = compact(store)

    assert result["actions/lead_scoring"] == {"files_removed": 12, "files_added": 1}
    assert len(_current_files(uri)) == 1
    assert pl.read_delta(uri).sort("action_id").equals(rows_before)
    assert result["ingests"]["files_removed"] > 1          # the ledger's many small appends, too
    # The small files of the old versions are still on disk (time travel) until a vacuum.
    assert len(_disk_files(uri)) == 13
    version_before_compaction = DeltaTable(uri).version() - 1
    assert pl.read_delta(uri, version=version_before_compaction).height == 12

    # At or above Delta's default retention (one week) nothing this fresh is removed, and the check stays on.
    assert vacuum(store, retention_hours=168)["actions/lead_scoring"] == 0
    # Below the default: allowed (the check is switched off), but these files are still too fresh.
    assert vacuum(store, retention_hours=1)["actions/lead_scoring"] == 0
    removed = vacuum(store, retention_hours=0)

    assert removed["actions/lead_scoring"] == 12
    assert _disk_files(uri) == _current_files(uri)
    assert pl.read_delta(uri).sort("action_id").equals(rows_before)
    assert store.scan_actions("lead_scoring").collect().height == 12
    with pytest.raises(FileNotFoundError):   # the old version's files are gone
        pl.read_delta(uri, version=version_before_compaction)


def test_maintenance_on_an_empty_store_does_nothing(store):
    assert all(n == 0 for n in apply_retention(store, datetime(2026, 2, 1, tzinfo=UTC), 12).values())
    assert all(c == {"files_removed": 0, "files_added": 0} for c in compact(store).values())
    assert all(n == 0 for n in vacuum(store, 0).values())
    assert all(DeltaTable(uri).version() <= 0 for uri, _, _ in store.tables().values() if DeltaTable.is_deltatable(uri))
