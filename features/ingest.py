"""Ingest: read action/outcome files, validate, pseudonymise, and store them atomically and idempotently.

One file is one ingest: the ledger records it as started, its valid rows go to the tables, its
invalid rows to quarantine with the reason, and the ledger records it as complete last (readers
see nothing of it before). A file that cannot be read at all is reported (and, from the inbox,
moved to ``failed/`` with a reason file) without stopping the other files. Large files are read
in batches, so memory does not grow with the file.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import queue
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import TypeVar

import polars as pl

from features.clock import Clock
from features.contract import OUTCOME_KEY, UTC_TIME, action_table_schema
from features.pseudonymise import pseudonymise
from features.store import (
    EventStore,
    KeyIndex,
    SchemaConflict,
    TableStream,
    action_content,
    action_id_hash,
    with_action_index,
    with_outcome_index,
)
from features.validate import ROW, FileRejected, as_text, validate_rows

T = TypeVar("T")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Rows per batch when reading a file (LOOP_INGEST_BATCH_ROWS, see features/settings.py): memory grows
# with it (one batch is read ahead, and polars' CSV reader reads further ahead).
BATCH_ROWS = int(os.environ.get("LOOP_INGEST_BATCH_ROWS", "200000"))
_READ_CHUNK = 16 * 1024 * 1024


@dataclass
class IngestReport:
    files: int = 0
    rows_read: int = 0
    actions_stored: int = 0
    outcomes_stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: IngestReport) -> None:
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


def crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when LOOP_CRASH_AT names this point: how the tests prove atomicity."""
    if os.environ.get("LOOP_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def discover(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return [path]


def _file_digest_and_check(path: Path, text: bool) -> str:
    """SHA-256 of the file, read in chunks; for text files also reject empty and non-UTF-8 content."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, seen_content = 0, False
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            seen_content = seen_content or bool(chunk.strip())
            # ASCII is UTF-8 (unless a character began in the chunk before): decoding only the other
            # chunks saves most of the check's cost on typical exports.
            if text and not (chunk.isascii() and not decoder.getstate()[0]):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise FileRejected(f"not UTF-8: invalid byte at offset {offset + exc.start}") from None
            offset += len(chunk)
    if text:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FileRejected(f"not UTF-8: truncated character at the end (offset {offset})") from None
        if not seen_content:
            raise FileRejected("empty file")
    return digest.hexdigest()[:16]


def read_batches(path: Path, batch_rows: int | None = None) -> Iterator[tuple[pl.DataFrame, int]]:
    """Yield (rows, number of the first row in the file) batch by batch."""
    batch_rows = batch_rows or BATCH_ROWS
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileRejected(f"unsupported file type '{path.suffix}' (use .csv, .parquet or .jsonl)")
    first = 2 if kind == "csv" else 1     # CSV: line numbers, the header is line 1
    try:
        if kind == "csv":
            header = pl.read_csv(path, infer_schema=False, n_rows=0)
            if header.width == 1 and any(sep in header.columns[0] for sep in (";", "\t", "|")):
                raise FileRejected(f"one column '{header.columns[0][:60]}': the delimiter is not ',' (use comma-separated CSV)")
            frames = pl.scan_csv(path, infer_schema=False).collect_batches(chunk_size=batch_rows)
        elif kind == "parquet":
            # One slice at a time: the streaming reader behind collect_batches reads ahead of a slow
            # consumer, and held most of a 5M-row file in memory.
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
            frames = (pl.scan_parquet(path).slice(start, batch_rows).collect() for start in range(0, rows, batch_rows))
        else:
            frames = pl.read_ndjson(path, infer_schema_length=None).lazy().collect_batches(chunk_size=batch_rows)
        empty = True
        for batch in frames:
            if batch.height:
                empty = False
                yield batch.rechunk(), first
                first += batch.height
        if empty:
            raise FileRejected("header only, no rows")
    except FileRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unreadable
        raise FileRejected(f"cannot parse as {kind}: {exc}") from None


def _in_background(work: Callable[[], T], name: str) -> Future[T]:
    """Run ``work`` in a thread of its own; its result (or exception) comes from the future."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - raised where the result is used
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class KnownKeys:
    """What the store holds, for one ingest: action ids per model and outcome keys, as hash indexes.

    Each is read once per ingest (one integer column of the table, not the keys) and kept up to
    date as the ingest appends, so later batches see the rows of earlier ones. A row whose hash
    is not in the index is new for certain; one whose hash is in it is held for ``_settle``,
    which compares the real keys, so a hash collision costs one comparison, never a lost row.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._loading: dict[str, Future[KeyIndex]] = {}
        # Actions appended by this ingest: streamed, so not in the tables until its commit.
        self._appended: list[pl.DataFrame] = []

    def remember(self, model: str, action_ids: pl.Series) -> None:
        if action_ids.len():
            self._appended.append(action_ids.to_frame("action_id").with_columns(model=pl.lit(model)))

    def prefetch(self, batch: pl.DataFrame) -> None:
        """Start reading the indexes the first batch's rows will need, so that happens while it is checked."""
        if self._loading:
            return
        if "decided_at" in batch.columns and "model" in batch.columns:
            for model in set(batch.get_column("model").cast(pl.String).unique().drop_nulls().to_list()) & set(self.store.specs):
                self._load(f"actions/{model}", lambda model=model: self.store.action_index(model))
        if "outcome" in batch.columns:
            self._load("outcomes", self.store.outcome_index)

    def _load(self, name: str, read: Callable[[], KeyIndex]) -> Future[KeyIndex]:
        if name not in self._loading:
            # A thread of its own: reading and sorting run in polars and numpy, outside the GIL.
            self._loading[name] = _in_background(read, f"index {name}")
        return self._loading[name]

    def actions(self, model: str) -> KeyIndex:
        return self._load(f"actions/{model}", lambda: self.store.action_index(model)).result()

    def outcomes(self) -> KeyIndex:
        return self._load("outcomes", self.store.outcome_index).result()

    def models_of(self, action_ids: pl.Series) -> pl.DataFrame:
        """action_id -> model for the given ids that are stored or appended by this ingest."""
        ids = action_ids.to_frame("action_id").with_columns(action_id_hash(pl.col("action_id")).alias("id_hash"))
        found = []
        if self._appended:
            fresh = pl.concat(self._appended).join(ids.select("action_id"), on="action_id", how="semi")
            found.append(fresh)
            ids = ids.join(fresh, on="action_id", how="anti")
        for model in self.store.specs:
            maybe = ids.filter(self.actions(model).contains(ids.get_column("id_hash")))
            if maybe.height:
                stored = (self.store.scan_all_actions(model).filter(pl.col("id_hash").is_in(maybe["id_hash"].implode()))
                          .select("action_id").filter(pl.col("action_id").is_in(maybe["action_id"].implode()))
                          .unique().collect())
                found.append(stored.with_columns(model=pl.lit(model)))
        return pl.concat(found) if found else pl.DataFrame(schema={"action_id": pl.String, "model": pl.String})


@dataclass
class _Held:
    """Rows whose key hash is already stored: stored already, or a key sharing a stored key's hash.

    They are decided once the whole source is read (``_settle``), with one read of the stored rows
    their hashes point to, instead of one read per batch. Nothing held is written before that.
    """

    actions: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    outcomes: list[pl.DataFrame] = field(default_factory=list)


class _Appends:
    """One ingest's appends: a TableStream per table, so its files are written in the background
    while the next batch is read and checked."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._actions: dict[str, TableStream] = {}
        self._outcomes: TableStream | None = None

    def actions(self, model: str) -> TableStream:
        if model not in self._actions:
            self._actions[model] = self.store.action_stream(model)
        return self._actions[model]

    def outcomes(self) -> TableStream:
        if self._outcomes is None:
            self._outcomes = self.store.outcome_stream()
        return self._outcomes

    def close(self) -> None:
        for stream in self._actions.values():
            stream.close()
        crash_point("actions")
        if self._outcomes is not None:
            self._outcomes.close()
        crash_point("outcomes")

    def abort(self) -> None:
        for stream in [*self._actions.values(), self._outcomes]:
            if stream is not None:
                stream.abort()


def _as_received(batch: pl.DataFrame, positions: pl.Series) -> pl.Series:
    """The rows at ``positions`` of the batch as JSON, as a quarantine entry keeps them."""
    rows = as_text(batch.select(pl.all().gather(positions.cast(pl.UInt64))))
    return rows.select(pl.struct(batch.columns).struct.json_encode().alias("__raw")).to_series()


def _provenance(ingest_id: str, now: datetime, source: str) -> list[pl.Expr]:
    return [pl.lit(ingest_id).alias("ingest_id"), pl.lit(now).cast(UTC_TIME).alias("ingested_at"),
            pl.lit(source).alias("source_file")]


def _pseudonymised(batch: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """The batch with its identifiers pseudonymised: the first thing, before validation, so no raw
    identifier reaches any table, the quarantine's copy of a rejected row included (its replay
    passes pseudonyms through unchanged)."""
    if "entity_id" not in batch.columns:
        return batch
    return batch.with_columns(pseudonymise(batch.get_column("entity_id").cast(pl.String), key).alias("entity_id"))


def _read_ahead(items: Iterator[T], name: str) -> Iterator[T]:
    """The items, each made in a background thread while the caller works on the one before.

    Reading and pseudonymising a batch run in polars outside the GIL, so they overlap with the
    checks and writes of the previous batch. One item is made ahead (bounded memory); an error
    making one is raised where it would have been.
    """
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(entry: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not hand_over(("item", item)):
                    return
            hand_over(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            hand_over(("error", exc))

    threading.Thread(target=make, name=name, daemon=True).start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _store_batch(batch: pl.DataFrame, first_row: int, source: str, store: EventStore, clock: Clock, ingest_id: str,
                 report: IngestReport, known: KnownKeys, held: _Held, appends: _Appends) -> list[pl.DataFrame]:
    """Validate one batch (already ``_pseudonymised``) and append its new rows; returns its rejected rows
    (quarantine is written once per file).

    Rows whose key hash is already stored are held back in ``held`` for ``_settle``.
    """
    now = clock.now()
    validated = validate_rows(batch, store.specs, now, first_row)
    report.rows_read += validated.rows_read
    report.duplicates += validated.duplicates_in_file
    provenance = _provenance(ingest_id, now, source)
    for model, rows in validated.actions.items():
        spec = store.specs[model]
        typed = {c: dtype for c, dtype in action_table_schema(spec).items() if c in rows.columns}
        rows = with_action_index(rows.cast(typed), spec).with_columns(provenance)
        maybe = known.actions(model).contains(rows.get_column("id_hash"))
        if maybe.any():
            candidates = rows.filter(maybe)
            raw = _as_received(batch, candidates.get_column(ROW) - first_row)
            held.actions.setdefault(model, []).append(candidates.with_columns(raw))
            rows = rows.filter(~maybe)
        report.actions_stored += appends.actions(model).put(rows)
        known.actions(model).add(rows.get_column("id_hash"))
        known.remember(model, rows.get_column("action_id"))
    outcomes = validated.outcomes
    if outcomes.height and outcomes.get_column("model").null_count():   # paired rows know their model already
        models = known.models_of(outcomes.filter(pl.col("model").is_null()).get_column("action_id"))
        outcomes = (outcomes.join(models, on="action_id", how="left", suffix="__known")
                    .with_columns(pl.coalesce("model", "model__known").alias("model")).drop("model__known"))
    if outcomes.height:
        outcomes = with_outcome_index(outcomes).with_columns(provenance)
        maybe = known.outcomes().contains(outcomes.get_column("key_hash"))
        if maybe.any():
            held.outcomes.append(outcomes.filter(maybe))
            outcomes = outcomes.filter(~maybe)
        report.outcomes_stored += appends.outcomes().put(outcomes)
        known.outcomes().add(outcomes.get_column("key_hash"))
    return [validated.rejected]


def _against(rows: pl.DataFrame, stored: pl.DataFrame, content: list[str]) -> tuple[pl.DataFrame, int, pl.DataFrame]:
    """Rows with a stored action_id of other content, how many repeat a stored row exactly, rows without one."""
    compared = rows.join(stored, on="action_id", how="inner", suffix="__stored", maintain_order="left")
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}__stored")) for c in content if c != "action_id"])
    conflicting = compared.filter(differs).select(rows.columns)
    unstored = rows.join(stored.select("action_id"), on="action_id", how="anti", maintain_order="left")
    return conflicting, compared.height - conflicting.height, unstored


def _settle_actions(store: EventStore, model: str, rows: pl.DataFrame, known: KnownKeys,
                    report: IngestReport) -> pl.DataFrame:
    """Decide held action rows: duplicates are dropped, conflicts returned (to reject), the rest stored.

    A stored row with the same id_hash and content_hash (the content includes the id) is the same
    action: 128 bits must agree by chance otherwise. Only the other held rows, usually none, are
    compared value by value with the stored rows of their id.
    """
    table = store.scan_all_actions(model)
    hashes = (table.filter(pl.col("id_hash").is_in(rows.get_column("id_hash").unique().implode()))
              .select("id_hash", "content_hash").unique().collect())
    same = rows.join(hashes, on=["id_hash", "content_hash"], how="semi")
    report.duplicates += same.height
    rows = rows.join(hashes, on=["id_hash", "content_hash"], how="anti", maintain_order="left")
    if rows.is_empty():
        return rows
    # A column the spec gained is not in the table yet: stored rows cannot conflict on it.
    present = set(table.collect_schema().names())
    content = [c for c in action_content(store.specs[model]) if c in present]
    stored = table.filter(pl.col("id_hash").is_in(rows.get_column("id_hash").unique().implode())).select(content).collect()
    conflicting, duplicates, unstored = _against(rows, stored, content)
    if unstored.height:
        # Only a hash in common with a stored id: the first row of each id is new, its repeats
        # compare with it as with a stored row.
        first = unstored.filter(pl.col("action_id").is_first_distinct())
        more, repeated, _ = _against(unstored.filter(~pl.col("action_id").is_first_distinct()), first.select(content),
                                     content)
        report.actions_stored += store.append_actions(model, first)
        known.actions(model).add(first.get_column("id_hash"))
        conflicting, duplicates = pl.concat([conflicting, more]), duplicates + repeated
    report.duplicates += duplicates
    return conflicting


def _settle(store: EventStore, known: KnownKeys, held: _Held, report: IngestReport) -> list[pl.DataFrame]:
    """Decide the held rows, compared with every stored row (this ingest's included); returns the rejected ones.

    Actions: the same content is a duplicate, other content a conflict (rejected); outcomes: a key
    that is stored is a duplicate. A held row that only shared a hash with a stored key is stored now.
    """
    rejected = []
    outcomes = pl.concat(held.outcomes) if held.outcomes else None
    if outcomes is not None:
        # The stored keys' second hashes are read while the actions are settled.
        stored_keys = _in_background(
            lambda: store.scan_all_outcomes().filter(pl.col("key_hash").is_in(outcomes.get_column("key_hash").unique().implode()))
            .select("key_hash", "key_check").unique().collect(), "settle outcomes")
    for model, parts in held.actions.items():
        conflicting = _settle_actions(store, model, pl.concat(parts), known, report)
        if conflicting.height:
            # Quarantined as it came in (like every other reject), found by its line number.
            rejected.append(conflicting.sort(ROW).select(
                pl.col(ROW).alias("row_number"),
                pl.format("duplicate action_id '{}' with conflicting content already stored", pl.col("action_id")).alias("reason"),
                pl.col("__raw").alias("raw")))
    if outcomes is not None:
        # A stored row with the same key_hash and key_check has the same key: 128 bits of it agree.
        new = (outcomes.join(stored_keys.result(), on=["key_hash", "key_check"], how="anti", maintain_order="left")
               .unique(subset=OUTCOME_KEY, keep="first", maintain_order=True))
        report.outcomes_stored += store.append_outcomes(new)
        known.outcomes().add(new.get_column("key_hash"))
        report.duplicates += outcomes.height - new.height
    return rejected


def _quarantine(rejected: pl.DataFrame, source: str, digest: str, store: EventStore, clock: Clock, ingest_id: str) -> int:
    if rejected.is_empty():
        return 0
    rows = rejected.with_row_index("__i").select(
        pl.format("{}:{}:{}", pl.lit(digest), pl.col("row_number").fill_null(-1), pl.col("__i")).alias("quarantine_id"),
        pl.lit(source).alias("source_file"), "row_number", "reason", "raw",
        pl.lit(ingest_id).alias("ingest_id"), pl.lit(clock.now()).cast(UTC_TIME).alias("quarantined_at"))
    store.insert_quarantine(rows)
    return rows.height


def ingest_file(path: Path, store: EventStore, clock: Clock, key: bytes) -> IngestReport:
    """Ingest one file as one atomic, idempotent unit. The caller holds ``store.writer()``."""
    source = str(path)
    # Hashing (and for text, checking) the whole file takes a while for a large CSV: it runs while
    # the file is read and stored, and only has to succeed before the ingest commits.
    checked = _in_background(lambda: _file_digest_and_check(path, text=SUFFIXES.get(path.suffix.lower()) != "parquet"),
                             f"digest {path.name}")
    try:
        batches = read_batches(path)
        first_batch = next(batches)
    except FileRejected as exc:
        return IngestReport(files=1, failed_files=[(source, _reason(exc, checked.result))])
    return ingest_batches(chain([first_batch], batches), source, checked.result, store, clock, key)


def _reason(exc: Exception, check: Callable[[], str] | str) -> str:
    """Why a file failed: what the whole-file check says (not UTF-8, empty) if it fails, else ``exc``."""
    if callable(check) and isinstance(exc, FileRejected):
        try:
            check()
        except FileRejected as failed:
            return str(failed)
    return str(exc)


def ingest_batches(batches: Iterable[tuple[pl.DataFrame, int]], source: str, digest: str | Callable[[], str],
                   store: EventStore, clock: Clock, key: bytes) -> IngestReport:
    """Ingest (rows, first row number) batches of one source as one atomic, idempotent unit.

    The ledger entry 'started' comes first and 'complete' last, so readers see all of the
    source or none of it. ``digest`` identifies the content (quarantine ids derive from it); a
    function giving it (or raising FileRejected) is called once the batches are read.
    The caller holds ``store.writer()``.
    """
    report = IngestReport(files=1)
    ingest_id = uuid.uuid4().hex[:16]
    store.record_ingest(ingest_id, "started", clock.now(), source, {})
    crash_point("started")
    rejected: list[pl.DataFrame] = []
    known, held, appends = KnownKeys(store), _Held(), _Appends(store)
    ahead = _read_ahead(((_pseudonymised(batch, key), first_row) for batch, first_row in batches), f"read {source}")
    try:
        for batch, first_row in ahead:
            known.prefetch(batch)
            rejected += _store_batch(batch, first_row, source, store, clock, ingest_id, report, known, held, appends)
        content = digest() if callable(digest) else digest
        appends.close()
        rejected += _settle(store, known, held, report)
    except (FileRejected, SchemaConflict) as exc:
        # Unreadable later batch, or a column whose type changed: the ledger never completes this
        # ingest, so nothing of it becomes visible, and the next writer removes what it wrote.
        appends.abort()
        report.failed_files.append((source, _reason(exc, digest)))
        return report
    except BaseException:
        appends.abort()
        raise
    finally:
        ahead.close()
    report.quarantined = _quarantine(pl.concat(rejected), source, content, store, clock, ingest_id)
    crash_point("quarantine")
    store.record_ingest(ingest_id, "complete", clock.now(), source, report.as_dict())
    crash_point("complete")
    return report


def ingest_paths(paths: Iterable[Path], store: EventStore, clock: Clock, key: bytes,
                 progress: Callable[[Path], None] | None = None) -> IngestReport:
    """Ingest files or folders, each file on its own, so one bad file stops nothing."""
    files = [f for p in paths for f in discover(Path(p))]
    total = IngestReport()
    with store.writer():
        for file in files:
            total.add(ingest_file(file, store, clock, key))
            if progress:
                progress(file)
    return total


def ingest_inbox(inbox: Path, store: EventStore, clock: Clock, key: bytes) -> IngestReport:
    """Ingest every file waiting in the inbox; move each to processed/ or failed/ (with a reason file).

    A file moves only after its ledger entry is written, so a crash before the move means the
    rerun finds it again and, ingests being idempotent, adds nothing twice.
    """
    inbox.mkdir(parents=True, exist_ok=True)
    total = IngestReport()
    with store.writer():
        for file in discover(inbox):
            report = ingest_file(file, store, clock, key)
            total.add(report)
            target = inbox / ("failed" if report.failed_files else "processed")
            target.mkdir(exist_ok=True)
            if report.failed_files:
                (target / f"{file.name}.reason.txt").write_text(report.failed_files[0][1] + "\n", encoding="utf-8")
            shutil.move(str(file), target / file.name)
    return total


def replay_quarantine(store: EventStore, clock: Clock, key: bytes) -> IngestReport:
    """Re-ingest quarantined rows (after the spec or the data was fixed); rows now valid leave quarantine."""
    from deltalake import DeltaTable

    total = IngestReport()
    with store.writer():
        quarantined = store.scan_quarantine().collect()
        for (source,), rows in quarantined.group_by("source_file", maintain_order=True):
            frame = pl.read_ndjson(io.BytesIO("\n".join(rows["raw"].to_list()).encode()), infer_schema_length=None)
            frame = frame.select(pl.all().cast(pl.String))
            ingest_id = uuid.uuid4().hex[:16]
            store.record_ingest(ingest_id, "started", clock.now(), f"replay:{source}", {})
            report = IngestReport(files=1)
            known, held, appends = KnownKeys(store), _Held(), _Appends(store)
            try:
                rejected = _store_batch(_pseudonymised(frame, key), 1, f"replay:{source}", store, clock, ingest_id,
                                        report, known, held, appends)
                appends.close()
            except BaseException:
                appends.abort()
                raise
            still_bad = pl.concat(rejected + _settle(store, known, held, report))
            # Rows still rejected keep their quarantine entry; the others are removed from quarantine.
            keep = set(still_bad["raw"].to_list()) if still_bad.height else set()
            fixed = rows.filter(~pl.col("raw").is_in(list(keep)))
            if fixed.height:
                ids = ", ".join(f"'{q}'" for q in fixed["quarantine_id"].to_list())
                DeltaTable(store.quarantine_uri).delete(f"quarantine_id IN ({ids})")
            report.quarantined = rows.height - fixed.height
            store.record_ingest(ingest_id, "complete", clock.now(), f"replay:{source}", report.as_dict())
            total.add(report)
    return total

