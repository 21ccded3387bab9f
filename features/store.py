"""The event store: Delta tables for actions (one per model), outcomes, quarantine, audit and the ingest ledger.

Delta commits one table at a time, so an ingest is made atomic by a ledger: it records that it
started, writes its rows (each carrying its ``ingest_id``) to the tables, and records that it is
complete last. Readers only see rows of completed ingests, so a crash at any point leaves what
they see as it was before or after the ingest, never in between. Writers take the store's lock
(one writer at a time); the next writer first removes rows of ingests that started but never
completed, so a rerun replaces a crashed ingest rather than adding to it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from features.contract import (
    AUDIT_SCHEMA,
    LEDGER_SCHEMA,
    OUTCOME_KEY,
    QUARANTINE_SCHEMA,
    action_table_schema,
    empty_frame,
    outcome_table_schema,
)
from features.spec import ModelSpec

# 1: the first release (no ledger); 2: ingest ledger, rows visible only once their ingest completed.
SCHEMA_VERSION = 2
LAYOUT_PREFIX = "loop store layout "


class StoreError(RuntimeError):
    """The store cannot be used as it is; the message says what to do."""


class SchemaConflict(StoreError):
    """A column's type in the data differs from its type in the store."""


@dataclass(frozen=True)
class TableStats:
    table: str
    rows: int
    version: int | None
    first: str | None
    last: str | None


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    """The folder behind a local location; a file:// URI is not a relative folder named 'file:'."""
    return Path(uri.removeprefix("file://"))


class EventStore:
    def __init__(self, uri: str, specs: dict[str, ModelSpec]) -> None:
        self.uri = uri.rstrip("/")
        self.specs = specs

    # -- locations ---------------------------------------------------------------------------
    def actions_uri(self, model: str) -> str:
        return f"{self.uri}/actions/{model}"

    @property
    def outcomes_uri(self) -> str:
        return f"{self.uri}/outcomes"

    @property
    def quarantine_uri(self) -> str:
        return f"{self.uri}/quarantine"

    @property
    def audit_uri(self) -> str:
        return f"{self.uri}/audit"

    @property
    def ledger_uri(self) -> str:
        return f"{self.uri}/ingests"

    def tables(self) -> dict[str, tuple[str, dict[str, pl.DataType], str]]:
        """name -> (uri, schema, time column)."""
        out = {f"actions/{m}": (self.actions_uri(m), action_table_schema(s), "decided_at") for m, s in self.specs.items()}
        out["outcomes"] = (self.outcomes_uri, outcome_table_schema(), "observed_at")
        out["quarantine"] = (self.quarantine_uri, QUARANTINE_SCHEMA, "quarantined_at")
        out["audit"] = (self.audit_uri, AUDIT_SCHEMA, "at")
        out["ingests"] = (self.ledger_uri, LEDGER_SCHEMA, "at")
        return out

    def ingested_tables(self) -> dict[str, str]:
        """Tables whose rows an ingest writes (and a crashed ingest may leave behind): name -> uri."""
        out = {f"actions/{m}": self.actions_uri(m) for m in self.specs}
        out["outcomes"] = self.outcomes_uri
        out["quarantine"] = self.quarantine_uri
        return out

    # -- schema version ------------------------------------------------------------------------
    # The layout version is the ledger table's description, so it travels with the store on any
    # storage delta-rs supports (Delta refuses custom table properties).
    def schema_version(self) -> int | None:
        """The store's layout version; None for an empty store, 1 for a store of the first release."""
        if self._exists(self.ledger_uri):
            description = DeltaTable(self.ledger_uri).metadata().description or ""
            return int(description.removeprefix(LAYOUT_PREFIX)) if description.startswith(LAYOUT_PREFIX) else 1
        if any(self._exists(uri) for uri in self.ingested_tables().values()):
            return 1
        return None

    def _mark_version(self, version: int) -> None:
        description = f"{LAYOUT_PREFIX}{version}"
        if self._exists(self.ledger_uri):
            DeltaTable(self.ledger_uri).alter.set_table_description(description)
            return
        if _is_local(self.ledger_uri):
            _local_path(self.ledger_uri).mkdir(parents=True, exist_ok=True)
        DeltaTable.create(self.ledger_uri, schema=empty_frame(LEDGER_SCHEMA).to_arrow().schema, name="ingests",
                          description=description)

    def check_version(self) -> None:
        version = self.schema_version()
        if version is not None and version < SCHEMA_VERSION:
            raise StoreError(f"the store at {self.uri} has layout version {version}, this release needs "
                             f"{SCHEMA_VERSION}: run `loop migrate` once to upgrade it")
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"the store at {self.uri} has layout version {version}, newer than this release "
                             f"({SCHEMA_VERSION}): upgrade the code")

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the store's write lock; clean up after crashed ingests first.

        The lock is an OS file lock, so it serialises writers on one machine (a shared local or
        network file system). On object storage a single writer process must be arranged instead.
        """
        self.check_version()
        if not _is_local(self.uri):
            if self.schema_version() is None:
                self._mark_version(SCHEMA_VERSION)
            self.recover()
            yield
            return
        root = _local_path(self.uri)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".writer.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if self.schema_version() is None:
                    self._mark_version(SCHEMA_VERSION)
                self.recover()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _exists(uri: str) -> bool:
        return DeltaTable.is_deltatable(uri)

    def _check_types(self, uri: str, rows: pl.DataFrame) -> None:
        stored = pl.scan_delta(uri).collect_schema()
        for name, dtype in rows.schema.items():
            if name in stored and stored[name] != dtype and dtype != pl.Null:
                raise SchemaConflict(f"column '{name}' is {stored[name]} in the store ({uri}) but {dtype} in the new "
                                     "rows: a type change is refused, not coerced (add a new column instead)")

    def _append_checked(self, uri: str, rows: pl.DataFrame) -> None:
        if not self._exists(uri):
            if _is_local(uri):
                _local_path(uri).mkdir(parents=True, exist_ok=True)
            rows.write_delta(uri, mode="append")
            return
        self._check_types(uri, rows)
        rows.write_delta(uri, mode="append", delta_write_options={"schema_mode": "merge"})

    def _insert_new(self, uri: str, rows: pl.DataFrame, key: list[str], time_column: str | None = None) -> int:
        """Insert rows whose key is not yet in the table; returns how many were inserted.

        Writers hold the store's lock, so nothing can add keys between the check and the write: the
        new rows are found by an anti-join on the key columns and appended, which is far cheaper
        than a Delta merge (a join against the whole table inside delta-rs). When the key includes
        a time column, only stored rows in the batch's time range are read. New columns (a spec
        gained an optional feature) are added to the table, old rows read them as null; columns
        the rows lack (a feature removed from the spec) stay in the table.
        """
        rows = rows.unique(subset=key, keep="first", maintain_order=True)
        if rows.is_empty():
            return 0
        if self._exists(uri):
            stored = pl.scan_delta(uri)
            if time_column:
                low, high = rows.get_column(time_column).min(), rows.get_column(time_column).max()
                stored = stored.filter(pl.col(time_column).is_between(low, high))
            existing = stored.select(key).join(rows.lazy().select(key), on=key, how="semi").collect()
            rows = rows.join(existing, on=key, how="anti")
        if rows.height:
            self._append_checked(uri, rows)
        return rows.height

    def append_actions(self, model: str, rows: pl.DataFrame) -> int:
        """Append action rows the writer has already checked are new (it holds the lock)."""
        schema = action_table_schema(self.specs[model])
        if rows.height:
            self._append_checked(self.actions_uri(model), rows.select(list(schema)).cast(schema))
        return rows.height

    def insert_outcomes(self, rows: pl.DataFrame) -> int:
        schema = outcome_table_schema()
        return self._insert_new(self.outcomes_uri, rows.select(list(schema)).cast(schema), OUTCOME_KEY, "observed_at")

    def insert_quarantine(self, rows: pl.DataFrame) -> int:
        return self._insert_new(self.quarantine_uri, rows.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA),
                                ["quarantine_id"])

    def _append(self, uri: str, rows: pl.DataFrame, schema: dict[str, pl.DataType]) -> None:
        rows = rows.select(list(schema)).cast(schema)
        if not self._exists(uri) and _is_local(uri):
            _local_path(uri).mkdir(parents=True, exist_ok=True)
        # schema_mode merge: a table written by an older release gains the columns added since.
        rows.write_delta(uri, mode="append", delta_write_options={"schema_mode": "merge"})

    def append_audit(self, rows: pl.DataFrame) -> None:
        missing = [pl.lit(None).alias(c) for c in AUDIT_SCHEMA if c not in rows.columns]
        self._append(self.audit_uri, rows.with_columns(missing), AUDIT_SCHEMA)

    def record_ingest(self, ingest_id: str, status: str, at: datetime, source_file: str, counts: dict[str, int]) -> None:
        """A ledger entry: 'started' before an ingest writes, 'complete' after its last table write."""
        self._append(self.ledger_uri, pl.DataFrame([{
            "ingest_id": ingest_id, "status": status, "at": at, "source_file": source_file,
            "counts": json.dumps(counts, sort_keys=True)}]), LEDGER_SCHEMA)

    def recover(self) -> dict[str, int]:
        """Remove rows of ingests that started but never completed (a crash); returns rows removed per table.

        Only called by a writer holding the lock, so no ingest is in progress.
        """
        ledger = self._scan(self.ledger_uri, LEDGER_SCHEMA)
        started = ledger.filter(pl.col("status") == "started").select("ingest_id")
        complete = ledger.filter(pl.col("status") == "complete").select("ingest_id")
        broken = started.join(complete, on="ingest_id", how="anti").collect().get_column("ingest_id").to_list()
        removed: dict[str, int] = {}
        if not broken:
            return removed
        ids = ", ".join(f"'{i}'" for i in broken)
        for name, uri in self.ingested_tables().items():
            if self._exists(uri):
                metrics = DeltaTable(uri).delete(f"ingest_id IN ({ids})")
                removed[name] = int(metrics.get("num_deleted_rows", 0))
        for ingest_id in broken:
            self.record_ingest(ingest_id, "abandoned", datetime.now().astimezone(), "", removed)
        return removed

    # -- reading -----------------------------------------------------------------------------
    def _scan(self, uri: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        if not self._exists(uri):
            return empty_frame(schema).lazy()
        rows = pl.scan_delta(uri)
        # A table written before a column joined the contract (e.g. outcomes' share_kept) reads it as null.
        stored = rows.collect_schema()
        missing = [pl.lit(None, dtype).alias(name) for name, dtype in schema.items() if name not in stored]
        return rows.with_columns(missing) if missing else rows

    def complete_ingests(self) -> pl.LazyFrame:
        """Ids of ingests the ledger marks complete, read once (collected), so a reader's view is one snapshot."""
        ids = (self._scan(self.ledger_uri, LEDGER_SCHEMA).filter(pl.col("status") == "complete")
               .select("ingest_id").unique().collect())
        return ids.lazy()

    def _visible(self, uri: str, schema: dict[str, pl.DataType], complete: pl.LazyFrame | None) -> pl.LazyFrame:
        self.check_version()
        rows = self._scan(uri, schema)
        return rows.join(complete if complete is not None else self.complete_ingests(), on="ingest_id", how="semi")

    def scan_actions(self, model: str, complete: pl.LazyFrame | None = None) -> pl.LazyFrame:
        """Actions of completed ingests. Pass one ``complete_ingests()`` to several scans for one consistent snapshot."""
        return self._visible(self.actions_uri(model), action_table_schema(self.specs[model]), complete)

    def scan_outcomes(self, complete: pl.LazyFrame | None = None) -> pl.LazyFrame:
        return self._visible(self.outcomes_uri, outcome_table_schema(), complete)

    def scan_quarantine(self, complete: pl.LazyFrame | None = None) -> pl.LazyFrame:
        return self._visible(self.quarantine_uri, QUARANTINE_SCHEMA, complete)

    def scan_audit(self) -> pl.LazyFrame:
        return self._scan(self.audit_uri, AUDIT_SCHEMA)

    def scan_ledger(self) -> pl.LazyFrame:
        return self._scan(self.ledger_uri, LEDGER_SCHEMA)

    def scan_all_actions(self, model: str) -> pl.LazyFrame:
        """Every stored action row, complete or not: for the writer's own duplicate checks, never for readers."""
        return self._scan(self.actions_uri(model), action_table_schema(self.specs[model]))

    def version(self, uri: str) -> int | None:
        return DeltaTable(uri).version() if self._exists(uri) else None

    def versions(self) -> dict[str, int | None]:
        return {name: self.version(uri) for name, (uri, _, _) in self.tables().items()}

    def stats(self) -> list[TableStats]:
        out = []
        complete = self.complete_ingests()
        for name, (uri, schema, time_col) in self.tables().items():
            frame = self._visible(uri, schema, complete) if uri in self.ingested_tables().values() else self._scan(uri, schema)
            row = frame.select(pl.len().alias("rows"), pl.col(time_col).min().alias("first"),
                               pl.col(time_col).max().alias("last")).collect().row(0, named=True)
            out.append(TableStats(name, int(row["rows"]), self.version(uri),
                                  row["first"].isoformat() if row["first"] else None,
                                  row["last"].isoformat() if row["last"] else None))
        return out
