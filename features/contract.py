"""The data contract: what an action and an outcome look like, as polars schemas.

An *action* is one decision the company's AI took (with the features it saw at that moment, so a
training set built from actions is point-in-time correct by construction). An *outcome* is what the
company later observed about that action; it arrives separately, late, and possibly several times.
"""

from __future__ import annotations

import polars as pl

from features.spec import ModelSpec

UTC_TIME = pl.Datetime("us", "UTC")

# Columns every action carries, whatever the model.
ACTION_SCHEMA: dict[str, pl.DataType] = {
    "action_id": pl.String(),
    "model": pl.String(),
    "model_version": pl.String(),
    "entity_id": pl.String(),
    "decided_at": UTC_TIME,
    "score": pl.Float64(),
    "threshold": pl.Float64(),
    "decision": pl.String(),
    "propensity": pl.Float64(),
}

OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "action_id": pl.String(),
    "observed_at": UTC_TIME,
    "outcome": pl.String(),
    "revenue": pl.Float64(),
    # Optional: the share of a reviewed draft the person kept when editing it, in [0, 1] (null: not given).
    "share_kept": pl.Float64(),
}

# Provenance added by the store to every row it keeps.
PROVENANCE_SCHEMA: dict[str, pl.DataType] = {
    "ingest_id": pl.String(),
    "ingested_at": UTC_TIME,
    "source_file": pl.String(),
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "quarantine_id": pl.String(),
    "source_file": pl.String(),
    "row_number": pl.Int64(),
    "reason": pl.String(),
    "raw": pl.String(),          # the row as received, JSON, so it can be replayed once fixed
    "ingest_id": pl.String(),
    "quarantined_at": UTC_TIME,
}

AUDIT_SCHEMA: dict[str, pl.DataType] = {
    "at": UTC_TIME,
    "model": pl.String(),
    "version": pl.String(),
    "event": pl.String(),        # promoted / kept / awaiting_approval / approved / rejected / rolled_back
    "actor": pl.String(),
    "reasons": pl.String(),
    "week": pl.String(),
    # Wall-clock time the row was written: only orders events that share one `at` (a simulated clock).
    "recorded_at": UTC_TIME,
}

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "ingest_id": pl.String(),
    "status": pl.String(),       # started / complete / abandoned (a crashed ingest, cleaned up)
    "at": UTC_TIME,
    "source_file": pl.String(),
    "counts": pl.String(),       # JSON: rows read, stored, duplicates, quarantined
}

# Hashes the store keeps next to each row (layout 3) so a writer can tell new rows from stored ones
# by reading integer columns instead of the keys and contents; readers never see them. id_hash:
# xxh3 of action_id; content_hash: of an action's content; key_hash and key_check: of an outcome's
# key (OUTCOME_KEY) with two seeds. How each is computed: features/store.py.
ACTION_INDEX_SCHEMA: dict[str, pl.DataType] = {"id_hash": pl.Int64(), "content_hash": pl.Int64()}
OUTCOME_INDEX_SCHEMA: dict[str, pl.DataType] = {"key_hash": pl.Int64(), "key_check": pl.Int64()}

OUTCOME_KEY = ["action_id", "observed_at", "outcome"]
REQUIRED_OUTCOME_COLUMNS = ["action_id", "observed_at", "outcome"]

_DTYPE_OF_FEATURE = {"numeric": pl.Float64(), "categorical": pl.String(), "boolean": pl.Boolean()}


def feature_schema(spec: ModelSpec) -> dict[str, pl.DataType]:
    return {f.name: _DTYPE_OF_FEATURE[f.type] for f in spec.features}


def action_table_schema(spec: ModelSpec) -> dict[str, pl.DataType]:
    """Schema of a model's stored action table: contract, the spec's features, provenance."""
    return {**ACTION_SCHEMA, **feature_schema(spec), **PROVENANCE_SCHEMA}


def outcome_table_schema() -> dict[str, pl.DataType]:
    return {**OUTCOME_SCHEMA, "model": pl.String(), **PROVENANCE_SCHEMA}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
