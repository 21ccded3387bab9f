"""Ingest: read action/outcome files, validate, pseudonymise, and store them idempotently.

One file is one unit: its valid rows go to the store, its invalid rows to quarantine with the
reason, and a file that cannot be read at all is reported (and, from the inbox, moved to
``failed/`` with a reason file) without stopping the other files.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from features.clock import Clock
from features.contract import ACTION_SCHEMA, feature_schema
from features.pseudonymise import pseudonymise
from features.store import EventStore
from features.validate import FileRejected, validate_rows

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class IngestReport:
    files: int = 0
    rows_read: int = 0
    actions_stored: int = 0
    outcomes_stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: "IngestReport") -> None:
        for name in ("files", "rows_read", "actions_stored", "outcomes_stored", "duplicates", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_files += other.failed_files

    @property
    def clean(self) -> bool:
        return self.quarantined == 0 and not self.failed_files

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "rows_read": self.rows_read, "actions_stored": self.actions_stored,
                "outcomes_stored": self.outcomes_stored, "duplicates": self.duplicates,
                "quarantined": self.quarantined, "failed_files": len(self.failed_files)}


def discover(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return [path]


def read_events(path: Path) -> tuple[pl.DataFrame, int]:
    """Read one file into a frame; returns it with the number of its first data row (line)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileRejected(f"unsupported file type '{path.suffix}' (use .csv, .parquet or .jsonl)")
    if kind == "parquet":
        try:
            return pl.read_parquet(path), 1
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unreadable
            raise FileRejected(f"not a readable Parquet file: {exc}") from None
    raw = path.read_bytes()
    if not raw.strip():
        raise FileRejected("empty file")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRejected(f"not UTF-8: invalid byte at offset {exc.start}") from None
    try:
        if kind == "csv":
            frame = pl.read_csv(path, infer_schema=False)
            if frame.width == 1 and any(sep in frame.columns[0] for sep in (";", "\t", "|")):
                raise FileRejected(f"one column '{frame.columns[0][:60]}': the delimiter is not ',' (use comma-separated CSV)")
            return frame, 2
        return pl.read_ndjson(path, infer_schema_length=None), 1
    except FileRejected:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FileRejected(f"cannot parse as {kind}: {exc}") from None


def _conflicts_with_store(store: EventStore, model: str, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Split rows into new ones, conflicting ones (same action_id, other content) and exact duplicates."""
    content = list(ACTION_SCHEMA) + list(feature_schema(store.specs[model]))
    stored = (store.scan_actions(model).select(content)
              .join(rows.lazy().select("action_id"), on="action_id", how="semi").collect())
    if stored.is_empty():
        return rows, rows.clear(), 0
    compared = rows.join(stored, on="action_id", how="left", suffix="__stored")
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}__stored")) for c in content if c != "action_id"])
    seen = pl.col("model__stored").is_not_null()
    new = compared.filter(~seen).select(rows.columns)
    conflicting = compared.filter(seen & differs).select(rows.columns)
    duplicates = compared.filter(seen & ~differs).height
    return new, conflicting, duplicates


def ingest_file(path: Path, store: EventStore, clock: Clock, key: bytes, ingest_id: str) -> IngestReport:
    report = IngestReport(files=1)
    now = clock.now()
    source = str(path)
    try:
        frame, first_row = read_events(path)
        if frame.height == 0:
            raise FileRejected("header only, no rows")
        validated = validate_rows(frame, store.specs, now, first_row)
    except FileRejected as exc:
        report.failed_files.append((source, str(exc)))
        return report
    report.rows_read = validated.rows_read
    report.duplicates += validated.duplicates_in_file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    provenance = [pl.lit(ingest_id).alias("ingest_id"), pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
                  pl.lit(source).alias("source_file")]

    rejected = [validated.rejected]
    for model, rows in validated.actions.items():
        rows = rows.with_columns(pseudonymise(rows["entity_id"], key).alias("entity_id"))
        new, conflicting, duplicates = _conflicts_with_store(store, model, rows)
        report.duplicates += duplicates
        if conflicting.height:
            rejected.append(conflicting.select(
                pl.lit(None, pl.Int64).alias("row_number"),
                pl.format("duplicate action_id '{}' with conflicting content already stored", pl.col("action_id")).alias("reason"),
                pl.struct(pl.all()).struct.json_encode().alias("raw")))
        report.actions_stored += store.insert_actions(model, new.with_columns(provenance))

    outcomes = validated.outcomes
    if outcomes.height:
        known = pl.concat([store.scan_actions(m).select("action_id", "model") for m in store.specs]).collect()
        outcomes = (outcomes.join(known, on="action_id", how="left", suffix="__known")
                    .with_columns(pl.coalesce("model", "model__known").alias("model")).drop("model__known"))
        inserted = store.insert_outcomes(outcomes.with_columns(provenance))
        report.outcomes_stored += inserted
        report.duplicates += outcomes.height - inserted

    quarantine = pl.concat(rejected)
    if quarantine.height:
        quarantine = quarantine.with_row_index("__i").select(
            pl.format("{}:{}:{}", pl.lit(digest), pl.col("row_number").fill_null(-1), pl.col("__i")).alias("quarantine_id"),
            pl.lit(source).alias("source_file"), "row_number", "reason", "raw",
            pl.lit(ingest_id).alias("ingest_id"), pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("quarantined_at"))
        store.insert_quarantine(quarantine)
        report.quarantined = quarantine.height
    return report


def ingest_paths(paths: Iterable[Path], store: EventStore, clock: Clock, key: bytes,
                 progress=None) -> IngestReport:
    """Ingest files or folders; every file is handled on its own so one bad file stops nothing."""
    ingest_id = uuid.uuid4().hex[:12]
    files = [f for p in paths for f in discover(Path(p))]
    total = IngestReport()
    for file in files:
        total.add(ingest_file(file, store, clock, key, ingest_id))
        if progress:
            progress(file)
    return total


def ingest_inbox(inbox: Path, store: EventStore, clock: Clock, key: bytes) -> IngestReport:
    """Ingest every file waiting in the inbox; move each to processed/ or failed/ (with a reason file)."""
    inbox.mkdir(parents=True, exist_ok=True)
    total = IngestReport()
    ingest_id = uuid.uuid4().hex[:12]
    for file in discover(inbox):
        report = ingest_file(file, store, clock, key, ingest_id)
        total.add(report)
        target = inbox / ("failed" if report.failed_files else "processed")
        target.mkdir(exist_ok=True)
        if report.failed_files:
            (target / f"{file.name}.reason.txt").write_text(report.failed_files[0][1] + "\n", encoding="utf-8")
        shutil.move(str(file), target / file.name)
    return total
