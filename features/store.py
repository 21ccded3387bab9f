"""The event store: Delta tables for actions (one per model), outcomes, quarantine and audit.

Writes are idempotent merges on each table's key, so re-running an ingest adds nothing twice.
Readers get lazy frames; a table that does not exist yet reads as empty with the right schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from features.contract import (
    AUDIT_SCHEMA,
    OUTCOME_KEY,
    QUARANTINE_SCHEMA,
    action_table_schema,
    empty_frame,
    outcome_table_schema,
)
from features.spec import ModelSpec


@dataclass(frozen=True)
class TableStats:
    table: str
    rows: int
    version: int | None
    first: str | None
    last: str | None


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

    def tables(self) -> dict[str, tuple[str, dict[str, pl.DataType], str]]:
        """name -> (uri, schema, time column)."""
        out = {f"actions/{m}": (self.actions_uri(m), action_table_schema(s), "decided_at") for m, s in self.specs.items()}
        out["outcomes"] = (self.outcomes_uri, outcome_table_schema(), "observed_at")
        out["quarantine"] = (self.quarantine_uri, QUARANTINE_SCHEMA, "quarantined_at")
        out["audit"] = (self.audit_uri, AUDIT_SCHEMA, "at")
        return out

    # -- writing -----------------------------------------------------------------------------
    @staticmethod
    def _exists(uri: str) -> bool:
        return DeltaTable.is_deltatable(uri)

    def _insert_new(self, uri: str, rows: pl.DataFrame, key: list[str]) -> int:
        """Insert rows whose key is not yet in the table; returns how many were inserted."""
        if rows.is_empty():
            return 0
        if not self._exists(uri):
            Path(uri).mkdir(parents=True, exist_ok=True) if "://" not in uri else None
            rows.write_delta(uri, mode="append")
            return rows.height
        predicate = " AND ".join(f"s.{k} = t.{k}" for k in key)
        metrics = rows.write_delta(
            uri, mode="merge",
            delta_merge_options={"predicate": predicate, "source_alias": "s", "target_alias": "t"},
        ).when_not_matched_insert_all().execute()
        return int(metrics["num_target_rows_inserted"])

    def insert_actions(self, model: str, rows: pl.DataFrame) -> int:
        schema = action_table_schema(self.specs[model])
        return self._insert_new(self.actions_uri(model), rows.select(list(schema)).cast(schema), ["action_id"])

    def insert_outcomes(self, rows: pl.DataFrame) -> int:
        schema = outcome_table_schema()
        return self._insert_new(self.outcomes_uri, rows.select(list(schema)).cast(schema), OUTCOME_KEY)

    def insert_quarantine(self, rows: pl.DataFrame) -> int:
        return self._insert_new(self.quarantine_uri, rows.select(list(QUARANTINE_SCHEMA)).cast(QUARANTINE_SCHEMA),
                                ["quarantine_id"])

    def append_audit(self, rows: pl.DataFrame) -> None:
        rows = rows.select(list(AUDIT_SCHEMA)).cast(AUDIT_SCHEMA)
        if not self._exists(self.audit_uri) and "://" not in self.audit_uri:
            Path(self.audit_uri).mkdir(parents=True, exist_ok=True)
        rows.write_delta(self.audit_uri, mode="append")

    # -- reading -----------------------------------------------------------------------------
    def _scan(self, uri: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        if not self._exists(uri):
            return empty_frame(schema).lazy()
        return pl.scan_delta(uri)

    def scan_actions(self, model: str) -> pl.LazyFrame:
        return self._scan(self.actions_uri(model), action_table_schema(self.specs[model]))

    def scan_outcomes(self) -> pl.LazyFrame:
        return self._scan(self.outcomes_uri, outcome_table_schema())

    def scan_quarantine(self) -> pl.LazyFrame:
        return self._scan(self.quarantine_uri, QUARANTINE_SCHEMA)

    def scan_audit(self) -> pl.LazyFrame:
        return self._scan(self.audit_uri, AUDIT_SCHEMA)

    def version(self, uri: str) -> int | None:
        return DeltaTable(uri).version() if self._exists(uri) else None

    def versions(self) -> dict[str, int | None]:
        return {name: self.version(uri) for name, (uri, _, _) in self.tables().items()}

    def stats(self) -> list[TableStats]:
        out = []
        for name, (uri, schema, time_col) in self.tables().items():
            frame = self._scan(uri, schema).select(
                pl.len().alias("rows"), pl.col(time_col).min().alias("first"), pl.col(time_col).max().alias("last")
            ).collect()
            row = frame.row(0, named=True)
            out.append(TableStats(name, int(row["rows"]), self.version(uri),
                                  row["first"].isoformat() if row["first"] else None,
                                  row["last"].isoformat() if row["last"] else None))
        return out
