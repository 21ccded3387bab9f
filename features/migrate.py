"""Upgrade a store written by an older release to the current layout (`loop migrate`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl

from features.contract import action_table_schema
from features.spec import ModelSpec
from features.store import (
    SCHEMA_VERSION,
    EventStore,
    StoreError,
    action_content,
    with_action_index,
    with_outcome_index,
)


def _backfill(uri: str, columns: list[str], add: Callable[[pl.DataFrame], pl.DataFrame]) -> int:
    """Give every row of the table ``columns`` computed by ``add``; returns the rows that lacked them.

    The table is streamed through polars in batches into one overwrite commit, so memory does not
    grow with the table; earlier versions stay readable (time travel) until a vacuum. A table
    whose rows all have the columns is left alone, so a migration interrupted between tables
    simply runs again.
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    table = pl.scan_delta(uri)
    present = [c for c in columns if c in table.collect_schema().names()]
    lacking = table.filter(pl.any_horizontal([pl.col(c).is_null() for c in present]) if len(present) == len(columns)
                           else pl.lit(True)).select(pl.len()).collect().item()
    if not lacking:
        return 0

    def filled(frame: pl.DataFrame) -> pl.DataFrame:
        return add(frame.drop(present)).to_arrow()

    first = filled(table.head(0).collect())
    batches = (batch for frame in table.collect_batches(chunk_size=500_000) for batch in filled(frame).to_batches())
    write_deltalake(uri, pa.RecordBatchReader.from_batches(first.schema, batches), mode="overwrite",
                    schema_mode="merge")
    return lacking


def _with_action_index(frame: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    """Hashes of stored actions; a feature the spec gained after they were stored is null in them, as readers see it."""
    schema = action_table_schema(spec)
    missing = [pl.lit(None, schema[c]).alias(c) for c in action_content(spec) if c not in frame.columns]
    return with_action_index(frame.with_columns(missing), spec).drop([e.meta.output_name() for e in missing])


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
    if version < 3:
        # Writers find stored rows by their hashes: rows stored before need theirs.
        filled = {f"actions/{model}": _backfill(store.actions_uri(model), ["id_hash", "content_hash"],
                                                lambda frame, spec=spec: _with_action_index(frame, spec))
                  for model, spec in store.specs.items() if store._exists(store.actions_uri(model))}
        if store._exists(store.outcomes_uri):
            filled["outcomes"] = _backfill(store.outcomes_uri, ["key_hash", "key_check"], with_outcome_index)
        store._mark_version(3)
        counts = ", ".join(f"{name} {rows:,}" for name, rows in filled.items()) or "no tables yet"
        done.append(f"layout 2 -> 3: added key hashes to the rows stored before ({counts})")
    return done or [f"already at layout {SCHEMA_VERSION}"]
