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
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import polars_hash  # noqa: F401 - registers the `nchash` expression namespace
from deltalake import DeltaTable, WriterProperties
from deltalake.writer.properties import ColumnProperties

from features.contract import (
    ACTION_INDEX_SCHEMA,
    ACTION_SCHEMA,
    AUDIT_SCHEMA,
    LEDGER_SCHEMA,
    OUTCOME_INDEX_SCHEMA,
    QUARANTINE_SCHEMA,
    action_table_schema,
    empty_frame,
    feature_schema,
    outcome_table_schema,
)
from features.spec import ModelSpec

# 1: the first release (no ledger); 2: ingest ledger, rows visible only once their ingest completed;
# 3: action rows carry id_hash and content_hash, outcome rows key_hash and key_check (for the writer's duplicate checks).
SCHEMA_VERSION = 3
LAYOUT_PREFIX = "loop store layout "
_INDEX_COLUMNS = sorted({*ACTION_INDEX_SCHEMA, *OUTCOME_INDEX_SCHEMA})


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


def action_id_hash(action_id: pl.Expr) -> pl.Expr:
    """The stored ``id_hash`` of an action id: 64-bit xxh3 (seed 0) of its UTF-8 bytes, as Int64.

    It must never change for a stored id (an id whose hash changed would look new), so it is a
    fixed published algorithm, not polars' own ``hash`` (which may change between versions).
    """
    return action_id.nchash.xxh3_64().reinterpret(signed=True)


def outcome_key_hash(seed: int = 0) -> pl.Expr:
    """The stored ``key_hash`` (seed 0) and ``key_check`` (seed 1) of an outcome: 64-bit xxh3 of its
    key (observed_at in microseconds, outcome, action_id), as Int64; together 128 bits of the key."""
    key = pl.concat_str([pl.col("observed_at").dt.cast_time_unit("us").to_physical().cast(pl.String),
                         pl.col("outcome"), pl.col("action_id")], separator="\x1f")
    return key.nchash.xxh3_64(seed=seed).reinterpret(signed=True)


def content_hash(rows: pl.DataFrame, columns: list[str]) -> pl.Series:
    """The stored ``content_hash`` of action rows: 64-bit xxh3 over their values in ``columns``.

    Each value becomes 8 bytes: a string its own xxh3, a number its IEEE-754 bits, a time its
    microseconds, a boolean 0/1; a null 0, with one bit per column saying which were null. The
    words of a row, columns in name order, are hashed as one byte string. Equal values give equal
    hashes on any machine and version; the few cases where equal values differ in bits (0.0 and
    -0.0, NaN payloads) only send a row to the exact comparison.
    """
    import pyarrow as pa

    columns = sorted(columns)
    n = rows.height
    words = rows.select([
        (pl.col(c).nchash.xxh3_64() if rows.schema[c] == pl.String
         else pl.col(c).dt.cast_time_unit("us").to_physical() if isinstance(rows.schema[c], pl.Datetime)
         else pl.col(c).cast(pl.UInt64) if rows.schema[c] == pl.Boolean
         else pl.col(c).cast(pl.Float64)).fill_null(0).alias(c)
        for c in columns])
    nulls = [np.zeros(n, dtype=np.uint64) for _ in range(len(columns) // 64 + 1)]
    for i, name in enumerate(columns):
        if rows.get_column(name).null_count():
            nulls[i // 64] |= rows.get_column(name).is_null().to_numpy().astype(np.uint64) << np.uint64(i % 64)
    # numpy at the library boundary: the words' bits side by side, read as one fixed-size binary per row.
    matrix = np.column_stack([words.get_column(c).to_numpy().view(np.uint64) for c in columns] + nulls)
    matrix = np.ascontiguousarray(matrix, dtype="<u8")
    binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(matrix.shape[1] * 8), n, [None, pa.py_buffer(matrix)])
    # Handed over through the Arrow C interface: pl.from_arrow would import pyarrow.compute (0.1 s) first.
    return (pl.Series(_ArrowArray(binary)).cast(pl.Binary).to_frame("row")
            .select(pl.col("row").nchash.xxh3_64().reinterpret(signed=True).alias("content_hash")).to_series())


class _ArrowArray:
    def __init__(self, array) -> None:
        self.array = array

    def __arrow_c_array__(self, requested_schema=None):
        return self.array.__arrow_c_array__(requested_schema)


def action_content(spec: ModelSpec) -> list[str]:
    """The columns whose values make an action's content: the same id with other content is a conflict."""
    return [*ACTION_SCHEMA, *feature_schema(spec)]


def with_action_index(rows: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    """Action rows (typed as stored) with their id_hash and content_hash."""
    if {"id_hash", "content_hash"} <= set(rows.columns):
        return rows
    return rows.with_columns(action_id_hash(pl.col("action_id")).alias("id_hash"),
                             content_hash(rows, action_content(spec)))


def with_outcome_index(rows: pl.DataFrame) -> pl.DataFrame:
    """Outcome rows (typed as stored) with their key_hash and key_check."""
    if {"key_hash", "key_check"} <= set(rows.columns):
        return rows
    return rows.with_columns(outcome_key_hash(0).alias("key_hash"), outcome_key_hash(1).alias("key_check"))


class _SortedRun:
    """Hashes sorted, with a directory: where the hashes starting with each top-bits prefix begin.

    With about two hashes per prefix, a lookup is two reads and a compare or two, vectorised over
    the batch; a binary search would make ~23 dependent reads per hash in a 10M-hash array. The
    hashes stay signed (as stored): an arithmetic shift keeps the prefix in their sort order.
    """

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = hashes
        self.hashes.sort()
        n = len(hashes)
        self.bits = max(1, n.bit_length() - 2)
        self._shift, self._half = 64 - self.bits, 1 << (self.bits - 1)
        # starts[p]: the first hash with prefix >= p. Prefixes rise with the sorted hashes, so it is
        # where each prefix first occurs, filled backwards over the prefixes that do not occur.
        # Piece by piece, so no temporary as large as the hashes is needed.
        self.starts = np.full((1 << self.bits) + 1, n, dtype=np.int32 if n < 2**31 else np.int64)
        step = 1 << 18
        prefix = np.empty(min(n, step), dtype=np.int64)
        for low in range(0, n, step):
            piece = self._prefix(hashes[low:low + step], prefix[:min(step, n - low)])
            first = np.flatnonzero(piece[1:] != piece[:-1]) + 1
            self.starts[piece[0]] = min(self.starts[piece[0]], low)
            self.starts[piece[first]] = first + low
        np.minimum.accumulate(self.starts[::-1], out=self.starts[::-1])

    def _prefix(self, hashes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        prefix = np.right_shift(hashes, self._shift, out=out)
        prefix += self._half
        return prefix

    def contains(self, query: np.ndarray) -> np.ndarray:
        prefix = self._prefix(query)
        start = self.starts[prefix]
        size = self.starts[prefix + 1] - start
        found = np.zeros(len(query), dtype=bool)
        pending = np.flatnonzero(size)
        offset = 0
        while len(pending):   # the k-th hash of each prefix, for the queries whose prefix has that many
            found[pending] |= self.hashes[start[pending] + offset] == query[pending]
            offset += 1
            pending = pending[size[pending] > offset]
        return found


class KeyIndex:
    """The key hashes of one table's rows: which of a batch's keys may be stored, in one lookup per key.

    A hash that is not found is a key that is not stored, because every stored row carries its
    key's hash. A hash that is found only makes the row a candidate (two keys may share a hash):
    the caller compares the candidates further, found by their hashes. Lookups cost per looked-up
    key, not per stored row, so a batch does not walk all stored hashes as a hash join would. The
    hashes an ingest adds are further runs, merged into one now and then.
    """

    def __init__(self, hashes: pl.Series) -> None:
        """``hashes``: an Int64 series without nulls (its chunks are copied into one array, then sorted in place)."""
        self._runs: list[_SortedRun] = []
        if hashes.len():
            self._runs.append(_SortedRun(_int64_array(hashes)))

    def __len__(self) -> int:
        return sum(len(run.hashes) for run in self._runs)

    def contains(self, hashes: pl.Series) -> pl.Series:
        """Per hash: True if it may be stored (then compare further), False if it is not."""
        query = hashes.to_numpy()
        found = np.zeros(len(query), dtype=bool)
        for run in self._runs:
            found |= run.contains(query)
        return pl.Series(hashes.name, found)

    def add(self, hashes: pl.Series) -> None:
        """Hashes the ingest added: a further run, merged with the last ones while they are no bigger (few runs)."""
        added = _int64_array(hashes)
        while len(added) and self._runs and len(self._runs[-1].hashes) <= len(added):
            added = np.concatenate([self._runs.pop().hashes, added])
        if len(added):
            self._runs.append(_SortedRun(added))


def _int64_array(hashes: pl.Series) -> np.ndarray:
    """A writable copy of the hashes, in one piece."""
    chunks = [chunk.to_numpy() for chunk in hashes.get_chunks()]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


# Columns whose values are (nearly) all different: a dictionary would be built and thrown away.
_DISTINCT_COLUMNS = {"action_id", "entity_id", "quarantine_id", "raw", *ACTION_INDEX_SCHEMA, *OUTCOME_INDEX_SCHEMA}


def writer_properties(schema: Mapping[str, pl.DataType]) -> WriterProperties:
    """How the store writes Parquet files.

    zstd level 1 gives files a third smaller than snappy (delta-rs' default) for about the same
    time; encoding 8192 rows at a time instead of 1024 saves a tenth. Statistics (min/max per
    file, which Delta readers use to skip files) are kept for times and numbers, what readers
    filter on; computing them for every string and hash cost about a fifth of the write. Row
    groups of 128k rows instead of 1M: the writer holds one in memory per table (about 100 MiB
    less at the peak of a 5M-row ingest).
    """
    columns = {}
    for name, dtype in schema.items():
        statistics = "CHUNK" if dtype.is_temporal() or (dtype.is_numeric() and name not in _DISTINCT_COLUMNS) else "NONE"
        columns[name] = ColumnProperties(statistics_enabled=statistics, dictionary_enabled=name not in _DISTINCT_COLUMNS)
    return WriterProperties(compression="ZSTD", compression_level=1, write_batch_size=8192,
                            max_row_group_size=128 * 1024, column_properties=columns)


_END, _ABORT = object(), object()


class TableStream:
    """One table's appends of one ingest, put batch by batch and written by a background thread.

    The thread writes what is queued while the caller prepares the next batch (delta-rs releases
    the GIL), so a second core is used; a small queue bounds the memory, and batches that queued
    up while it wrote go into one commit. Each write hands delta-rs a complete table: a stream
    pulled from Python would block delta-rs' runtime threads while it waits for the next batch,
    and with as many streams as cores (two action tables and the outcomes on two cores) every
    runtime thread waited and the ingest hung. The rows stay invisible to readers until the
    ingest's ledger entry completes; ``abort`` writes nothing more.
    """

    def __init__(self, uri: str, prepare: Callable[[pl.DataFrame], pl.DataFrame],
                 check: Callable[[str, pl.DataFrame], None]) -> None:
        self.uri = uri
        self.rows = 0
        self._prepare, self._check = prepare, check
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def put(self, rows: pl.DataFrame) -> int:
        """Queue the rows for writing (blocks while the writer is two batches behind); returns how many."""
        if rows.is_empty():
            return 0
        rows = self._prepare(rows)
        if self._thread is None:
            self._check(self.uri, rows)
            self._thread = threading.Thread(target=self._write, args=(writer_properties(rows.schema),),
                                            name=f"append {self.uri}", daemon=True)
            self._thread.start()
        self._queue.put(rows.to_arrow(compat_level=pl.CompatLevel.newest()))
        self._raise()
        self.rows += rows.height
        return rows.height

    def close(self) -> None:
        """Wait until everything put is written."""
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join()
            self._raise()

    def abort(self) -> None:
        """Write nothing more (what was written stays invisible: its ingest never completes)."""
        if self._thread is not None:
            self._queue.put(_ABORT)
            self._thread.join()

    def _raise(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write(self, properties: WriterProperties) -> None:
        import pyarrow as pa
        from deltalake import write_deltalake

        while True:
            tables = [self._queue.get()]
            while tables[-1] is not _END and tables[-1] is not _ABORT and not self._queue.empty():
                tables.append(self._queue.get())
            done = tables[-1] is _END or tables[-1] is _ABORT
            if tables[-1] is _ABORT:
                return
            tables = [t for t in tables if t is not _END]
            if tables and self._failure is None:   # after a failure, only take batches until close or abort
                try:
                    write_deltalake(self.uri, pa.concat_tables(tables), mode="append", schema_mode="merge",
                                    writer_properties=properties)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by _raise
                    self._failure = exc
            if done:
                return


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    """The folder behind a local location; a file:// URI is not a relative folder named 'file:'."""
    return Path(uri.removeprefix("file://"))


class EventStore:
    def __init__(self, uri: str, specs: dict[str, ModelSpec]) -> None:
        self.uri = uri.rstrip("/")
        self.specs = specs
        self._writer_thread: int | None = None   # the thread inside writer(), which may enter it again

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
        Re-entrant for the thread holding it (a second flock on a new descriptor of the same file
        would wait for itself): the guard rolls back, and rollback takes the lock, under the lock.
        """
        if self._writer_thread == threading.get_ident():
            yield
            return
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
            self._writer_thread = threading.get_ident()
            try:
                if self.schema_version() is None:
                    self._mark_version(SCHEMA_VERSION)
                self.recover()
                yield
            finally:
                self._writer_thread = None
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

    def _prepare_append(self, uri: str, rows: pl.DataFrame) -> None:
        """Refuse a type change; make a new local table's folder."""
        if self._exists(uri):
            self._check_types(uri, rows)
        elif _is_local(uri):
            _local_path(uri).mkdir(parents=True, exist_ok=True)

    def _append_checked(self, uri: str, rows: pl.DataFrame) -> None:
        self._prepare_append(uri, rows)
        rows.write_delta(uri, mode="append", delta_write_options={
            "schema_mode": "merge", "writer_properties": writer_properties(rows.schema)})

    def _insert_new(self, uri: str, rows: pl.DataFrame, key: list[str]) -> int:
        """Insert rows whose key is not yet in the table; returns how many were inserted.

        Writers hold the store's lock, so nothing can add keys between the check and the write: the
        new rows are found by an anti-join on the key columns and appended, which is far cheaper
        than a Delta merge (a join against the whole table inside delta-rs).
        """
        rows = rows.unique(subset=key, keep="first", maintain_order=True)
        if rows.is_empty():
            return 0
        if self._exists(uri):
            existing = pl.scan_delta(uri).select(key).join(rows.lazy().select(key), on=key, how="semi").collect()
            rows = rows.join(existing, on=key, how="anti")
        if rows.height:
            self._append_checked(uri, rows)
        return rows.height

    def _action_rows(self, model: str, rows: pl.DataFrame) -> pl.DataFrame:
        schema = action_table_schema(self.specs[model])
        rows = with_action_index(rows.select(list(schema) + [c for c in ACTION_INDEX_SCHEMA if c in rows.columns])
                                 .cast(schema), self.specs[model])
        return rows.select([*schema, *ACTION_INDEX_SCHEMA])

    def _outcome_rows(self, rows: pl.DataFrame) -> pl.DataFrame:
        schema = outcome_table_schema()
        rows = with_outcome_index(rows.select(list(schema) + [c for c in OUTCOME_INDEX_SCHEMA if c in rows.columns])
                                  .cast(schema))
        return rows.select([*schema, *OUTCOME_INDEX_SCHEMA])

    def append_actions(self, model: str, rows: pl.DataFrame) -> int:
        """Append action rows the writer has already checked are new (it holds the lock).

        New columns (a spec gained an optional feature) are added to the table, old rows read them
        as null; columns the rows lack (a feature removed from the spec) stay in the table.
        """
        if rows.height:
            self._append_checked(self.actions_uri(model), self._action_rows(model, rows))
        return rows.height

    def append_outcomes(self, rows: pl.DataFrame) -> int:
        """Append outcome rows the writer has already checked are new (it holds the lock)."""
        if rows.height:
            self._append_checked(self.outcomes_uri, self._outcome_rows(rows))
        return rows.height

    def action_stream(self, model: str) -> TableStream:
        """``append_actions`` batch by batch, written in the background (see TableStream)."""
        return TableStream(self.actions_uri(model), lambda rows: self._action_rows(model, rows), self._prepare_append)

    def outcome_stream(self) -> TableStream:
        """``append_outcomes`` batch by batch, written in the background (see TableStream)."""
        return TableStream(self.outcomes_uri, self._outcome_rows, self._prepare_append)

    def action_index(self, model: str) -> KeyIndex:
        """The id_hash of every stored action of the model (complete or not): for the writer's duplicate checks."""
        return self._index(self.actions_uri(model), "id_hash", action_id_hash(pl.col("action_id")))

    def outcome_index(self) -> KeyIndex:
        """The key_hash of every stored outcome: for the writer's duplicate checks."""
        return self._index(self.outcomes_uri, "key_hash", outcome_key_hash(0))

    def _index(self, uri: str, column: str, derive: pl.Expr) -> KeyIndex:
        if not self._exists(uri):
            return KeyIndex(pl.Series(column, [], dtype=pl.Int64))
        hashes = pl.scan_delta(uri).select(column).collect().get_column(column)
        if hashes.null_count():
            # Rows written around the store's own code (every writer here adds the hash): derive theirs.
            missing = pl.scan_delta(uri).filter(pl.col(column).is_null()).select(derive.alias(column)).collect()
            hashes = pl.concat([hashes.drop_nulls(), missing.get_column(column)])
        return KeyIndex(hashes)

    def scan_all_outcomes(self) -> pl.LazyFrame:
        """Every stored outcome row, complete or not: for the writer's own duplicate checks, never for readers."""
        return self._scan(self.outcomes_uri, {**outcome_table_schema(), **OUTCOME_INDEX_SCHEMA})

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
        rows = self._scan(uri, schema).drop(*_INDEX_COLUMNS, strict=False)
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
        return self._scan(self.actions_uri(model), {**action_table_schema(self.specs[model]), **ACTION_INDEX_SCHEMA})

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
