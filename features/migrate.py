"""Upgrade a store written by an older release to the current layout (`loop migrate`)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from features.store import SCHEMA_VERSION, EventStore, StoreError


def migrate(store: EventStore, now: datetime) -> list[str]:
    """Bring the store to SCHEMA_VERSION; returns what was done. Safe to run again."""
    version = store.schema_version()
    if version is None:
        return ["empty store: nothing to migrate"]
    if version > SCHEMA_VERSION:
        raise StoreError(f"store layout {version} is newer than this release ({SCHEMA_VERSION})")
    done = []
    if version < 2:
        # Release 1 wrote every ingest completely or failed loudly, and had no ledger: its rows were
        # all visible, so each ingest id found in the tables is recorded as complete.
        ids = pl.concat([store._scan(uri, {"ingest_id": pl.String()}).select("ingest_id")
                         for uri in store.ingested_tables().values() if store._exists(uri)]).unique().collect()
        for ingest_id in ids.get_column("ingest_id").drop_nulls().to_list():
            store.record_ingest(ingest_id, "complete", now, "migrated from layout 1", {})
        store._mark_version(2)
        done.append(f"layout 1 -> 2: recorded {ids.height} earlier ingests as complete in the ledger")
    return done or [f"already at layout {SCHEMA_VERSION}"]
