"""Erasure: remove every trace of one person from the store and from derived files ("forget").

``forget(store, entity, key, state_dir, mlflow_artifact_root)`` takes a raw identifier (an e-mail, a
message id) or an already pseudonymised ``pid_...`` value and

1. deletes the person's rows from every Delta table with ``DeltaTable.delete``: actions of every
   model whose ``entity_id`` is the pseudonym; outcomes of those actions; quarantine rows whose
   raw JSON, reason or file name mentions the raw id, the pseudonym or one of the action ids; audit
   rows that mention them (the audit is model-level, so normally none);
2. physically removes the data files those delete commits rewrote (the ``remove`` actions of each
   delete commit's ``_delta_log/<version>.json``), plus older unreferenced copies in the table folder
   that still hold the person (left behind by compaction or earlier deletes until a vacuum). This is
   targeted: unrelated old files stay, unlike a blanket ``vacuum``;
3. purges the Delta log history of every table whose log mentions the person. Commit files keep
   per-file min/max statistics (a pseudonym or action id can be the minimum of a file) and a delete
   commit records its predicate (which names the pseudonym). The purge writes a metadata-only commit,
   a checkpoint of the current state, and removes the log files before it, which is what Delta's own
   log cleanup does after ``delta.logRetentionDuration``. Consequence: time travel to versions from
   before the erasure is no longer possible (old versions recorded in MLflow lineage cannot be read);
4. scans derived files under ``state_dir`` and the MLflow artifact root (reports, input examples,
   datasets, inbox exports: any text, JSON, HTML, CSV, Parquet): a tabular file (.csv, .parquet,
   .jsonl, .ndjson) is rewritten without the matching rows (deleted if none remain), so other people's
   rows in a shared export survive; any other matching file is deleted. Databases (MLflow's or
   Prefect's SQLite) are never deleted: if one mentions the person it is listed as needing attention.

Matching: the raw id, the pseudonym and action ids of 8 characters or more match as whole tokens
(not inside a longer word, so ``bob@x.de`` does not match ``jimbob@x.de``), also JSON-, URL- and
HTML-escaped; shorter action ids only as quoted values (``"a1"``, ``'a1'``), because a bare ``a1``
occurs in any HTML page. Action ids the scorer creates (``models/policy.py``) embed the first 16 hex
characters of the pseudonym, which therefore also counts as a token of the person. Compressed
archives (.gz, .zip) are not opened.

Only local paths work. On object storage the Delta deletes work as they are, but removing the
rewritten data files, the log purge and the scan of derived files need an object-store client (for
example ``obstore``/``fsspec`` listing and deleting keys with the same logic), and MLflow artifacts in
a remote artifact store would have to be found through the MLflow API. Run it while no ingest
writes to the store: the log purge removes commit files a concurrent reader may be about to read.
"""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from deltalake import DeltaTable

from features.pseudonymise import PREFIX, pseudonym
from features.store import EventStore

_LOG = "_delta_log"
_SHORT_ID = 8                   # action ids shorter than this match only as quoted values
_FRAGMENT = slice(4, 20)        # models/policy.py: action_id = f"{model[:4]}-{pseudonym[4:20]}-{ms}"
_IN_CHUNK = 1000                # values per IN (...) list in one delete predicate
_TABULAR = {".csv", ".parquet", ".jsonl", ".ndjson"}
_DATABASE = {".db", ".sqlite", ".sqlite3", ".db-wal", ".db-shm", ".db-journal", ".sqlite-wal", ".sqlite-shm"}
_WORD = "A-Za-z0-9_"


@dataclass
class ErasureReport:
    pseudonym: str
    actions: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)
    data_files_removed: list[str] = field(default_factory=list)
    older_copies_removed: list[str] = field(default_factory=list)
    log_files_removed: dict[str, int] = field(default_factory=dict)
    derived_files_removed: list[str] = field(default_factory=list)
    derived_files_rewritten: list[str] = field(default_factory=list)
    needs_attention: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows_removed.values())

    def as_dict(self) -> dict:
        return {"pseudonym": self.pseudonym, "actions": self.actions, "rows_removed": dict(self.rows_removed),
                "data_files_removed": list(self.data_files_removed),
                "older_copies_removed": list(self.older_copies_removed),
                "log_files_removed": dict(self.log_files_removed),
                "derived_files_removed": list(self.derived_files_removed),
                "derived_files_rewritten": list(self.derived_files_rewritten),
                "needs_attention": list(self.needs_attention)}

    def lines(self) -> list[str]:
        """Human-readable summary. Shows the pseudonym, never the raw identifier."""
        out = [f"forgot {self.pseudonym}: {self.total_rows} rows ({self.actions} actions)"]
        out += [f"  {table}: {n} rows removed" for table, n in self.rows_removed.items()]
        out.append(f"Delta data files removed: {len(self.data_files_removed)} rewritten by the delete commits, "
                   f"{len(self.older_copies_removed)} older copies")
        out += [f"  {p}" for p in self.data_files_removed + self.older_copies_removed]
        if self.log_files_removed:
            out.append("Delta log history purged (no time travel to before the erasure): "
                       + ", ".join(f"{t} ({n} log files)" for t, n in self.log_files_removed.items()))
        out.append(f"derived files removed: {len(self.derived_files_removed)}")
        out += [f"  {p}" for p in self.derived_files_removed]
        out.append(f"derived files rewritten without the person's rows: {len(self.derived_files_rewritten)}")
        out += [f"  {p}" for p in self.derived_files_rewritten]
        if self.needs_attention:
            out.append(f"NOT removed, needs attention (databases are never deleted): {len(self.needs_attention)}")
            out += [f"  {p}" for p in self.needs_attention]
        return out


# -- matching ------------------------------------------------------------------------------------
def _variants(value: str) -> set[str]:
    return {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1],
            urllib.parse.quote(value, safe=""), html.escape(value)} - {""}


class Matcher:
    """Finds mentions of one person in text, bytes and frames."""

    def __init__(self, tokens: Iterable[str], short_ids: Iterable[str] = ()) -> None:
        patterns, literals = [], set()
        self.tokens = sorted({v for t in tokens if t for v in _variants(t)})
        for token in self.tokens:
            head = f"(?<![{_WORD}])" if re.match(f"[{_WORD}]", token[0]) else ""
            tail = f"(?![{_WORD}])" if re.match(f"[{_WORD}]", token[-1]) else ""
            patterns.append(head + re.escape(token) + tail)
            literals.add(token)
        for short in set(short_ids) - {""}:
            for quoted in {json.dumps(short, ensure_ascii=False), f"'{short}'"}:
                patterns.append(re.escape(quoted))
                literals.add(quoted)
        self.literals = sorted(literals)
        self.short_ids = sorted(set(short_ids) - {""})
        self._text = re.compile("|".join(patterns)) if patterns else None
        self._bytes = re.compile("|".join(patterns).encode("utf-8")) if patterns else None

    def in_text(self, text: str | None) -> bool:
        return bool(text) and self._text is not None and self._text.search(text) is not None

    def in_bytes(self, data: bytes) -> bool:
        """Text (no NUL byte, as grep decides): the token rule. Binary (a database page, a pickle): a
        token's bytes anywhere, since a length byte before a string may look like a letter; short action
        ids are not looked for in binary files."""
        if b"\0" in data[:65536]:
            return any(t.encode("utf-8") in data for t in self.tokens)
        return self._bytes is not None and self._bytes.search(data) is not None

    def mask(self, texts: pl.Series) -> pl.Series:
        """Boolean per value: a fast literal pre-filter in polars, the exact token rule on candidates."""
        if not self.literals or texts.is_empty():
            return pl.Series([False] * texts.len(), dtype=pl.Boolean)
        equal = texts.is_in(self.short_ids).fill_null(False)   # a cell that is a short action id
        candidate = texts.str.contains_any(self.literals).fill_null(False)
        if not candidate.any():
            return equal
        where = candidate.arg_true()
        exact = [self.in_text(t) for t in texts.gather(where).to_list()]
        return equal | pl.Series([False] * texts.len(), dtype=pl.Boolean).scatter(where, exact)

    def row_mask(self, frame: pl.DataFrame) -> pl.Series:
        """Boolean per row: does any text cell mention the person (nested cells are JSON-encoded)."""
        mask = pl.Series([False] * frame.height, dtype=pl.Boolean)
        for name, dtype in frame.schema.items():
            if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
                texts = frame.get_column(name).cast(pl.String)
            elif isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
                texts = frame.select(pl.struct(name).struct.json_encode()).to_series()
                # A string inside (e.g. a checkpoint's JSON statistics) is escaped once more: look at both.
                mask = mask | self.mask(texts.str.replace_all('\\"', '"', literal=True))
            elif dtype == pl.Binary:
                data = frame.get_column(name).to_list()
                mask = mask | pl.Series([b is not None and self.in_bytes(b) for b in data], dtype=pl.Boolean)
                continue
            elif dtype.is_numeric() or dtype.is_temporal() or dtype in (pl.Boolean, pl.Null):
                continue   # numbers, times, booleans hold no identifiers
            else:          # anything else (a map, an object): its Python text
                texts = pl.Series([None if v is None else str(v) for v in frame.get_column(name).to_list()],
                                  dtype=pl.String)
            mask = mask | self.mask(texts)
        return mask


# -- Delta ---------------------------------------------------------------------------------------
def _local(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urllib.parse.unquote(uri[len("file://"):]))
    if "://" in uri:
        raise NotImplementedError(f"forget works on local stores only, not '{uri}' (see the module docstring)")
    return Path(uri)


def _sql_in(column: str, values: list[str]) -> list[str]:
    quoted = ["'" + v.replace("'", "''") + "'" for v in values]
    return [f"{column} IN ({', '.join(quoted[i:i + _IN_CHUNK])})" for i in range(0, len(quoted), _IN_CHUNK)]


def _delete(uri: str, predicates: list[str]) -> tuple[int, list[int]]:
    """Run the deletes; returns rows deleted and the versions of the commits that deleted something."""
    rows, versions = 0, []
    for predicate in predicates:
        table = DeltaTable(uri)
        metrics = table.delete(predicate)
        if metrics.get("num_deleted_rows", 0) or metrics.get("num_removed_files", 0):
            rows += int(metrics.get("num_deleted_rows", 0))
            versions.append(DeltaTable(uri).version())
    return rows, versions


def _log_version(name: str) -> int | None:
    head = name[:20]
    return int(head) if len(head) == 20 and head.isdigit() else None


def _removed_by(table_dir: Path, version: int) -> list[Path]:
    """Data files a commit removed (its ``remove`` actions)."""
    out = []
    with open(table_dir / _LOG / f"{version:020d}.json", encoding="utf-8") as log:
        for line in log:
            action = json.loads(line) if line.strip() else {}
            if "remove" in action:
                path = action["remove"]["path"]
                out.append(_local(path) if "://" in path else table_dir / urllib.parse.unquote(path))
    return out


def _data_files(table_dir: Path) -> list[Path]:
    return [p for p in table_dir.rglob("*.parquet") if _LOG not in p.relative_to(table_dir).parts]


def _current_files(uri: str) -> set[Path]:
    return {_local(u).resolve() for u in DeltaTable(uri).file_uris()}


def _log_mentions(table_dir: Path, matcher: Matcher) -> bool:
    for path in (table_dir / _LOG).iterdir():
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            try:
                if matcher.row_mask(pl.read_parquet(path)).any():
                    return True
            except Exception:  # noqa: BLE001 - unreadable checkpoint: fall back to the bytes
                if matcher.in_bytes(path.read_bytes()):
                    return True
        elif matcher.in_bytes(path.read_bytes()):
            return True
    return False


def _purge_history(uri: str, table_dir: Path) -> int:
    """Metadata-only commit, checkpoint, then remove every log file before that checkpoint."""
    table = DeltaTable(uri)
    retention = table.metadata().configuration.get("delta.logRetentionDuration", "interval 30 days")
    # Re-setting the effective value changes nothing but is a commit after the delete commits,
    # so the checkpoint (and the first kept log file) carries no predicate and no old statistics.
    table.alter.set_table_properties({"delta.logRetentionDuration": retention})
    table = DeltaTable(uri)
    table.create_checkpoint()
    keep_from = table.version()
    removed = 0
    log_dir = table_dir / _LOG
    for path in sorted(log_dir.iterdir()):
        version = _log_version(path.name)
        if version is not None and version < keep_from and path.is_file():
            path.unlink()
            removed += 1
    commits = log_dir / "_commits"
    if commits.is_dir():
        for path in commits.iterdir():
            version = _log_version(path.name)
            if version is not None and version < keep_from and path.is_file():
                path.unlink()
                removed += 1
    return removed


def _read(uri: str) -> pl.LazyFrame | None:
    """Every row of a table, whatever the store's reader-visibility rules (an erasure sees all)."""
    return pl.scan_delta(uri) if DeltaTable.is_deltatable(uri) else None


def _person_rows(store: EventStore, pseudo: str, raw: str | None, matcher: Matcher
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """Delete predicates of the action and outcome tables, and the person's action ids."""
    predicates: dict[str, list[str]] = {}
    entity_values = [v for v in (pseudo, raw) if v]
    action_ids: set[str] = set()
    for model in store.specs:
        rows = _read(store.actions_uri(model))
        if rows is None:
            continue
        found = rows.filter(pl.col("entity_id").is_in(entity_values)).select("action_id", "entity_id").collect()
        if found.height:
            action_ids |= set(found["action_id"].drop_nulls().to_list())
            predicates[f"actions/{model}"] = _sql_in("entity_id", sorted(set(found["entity_id"].to_list())))

    outcomes = _read(store.outcomes_uri)
    if outcomes is not None:
        candidates = (outcomes.filter(pl.col("action_id").is_in(sorted(action_ids))
                                      | pl.col("action_id").str.contains(pseudo[_FRAGMENT], literal=True))
                      .select("action_id").unique().collect()["action_id"].to_list())
        # A fragment hit counts only where the fragment is a whole token (the same rule as everywhere).
        outcome_ids = sorted(a for a in candidates if a in action_ids or matcher.in_text(a))
        if outcome_ids:
            predicates["outcomes"] = _sql_in("action_id", outcome_ids)
        action_ids |= set(outcome_ids)
    return predicates, sorted(action_ids)


def _text_table_predicates(frame: pl.DataFrame, matcher: Matcher, key: str | None) -> list[str]:
    """Predicates for tables searched by content: by key when there is one, else by the matching values."""
    if frame.is_empty():
        return []
    hits = frame.filter(matcher.row_mask(frame))
    if hits.is_empty():
        return []
    if key:
        return _sql_in(key, sorted(set(hits[key].drop_nulls().to_list())))
    out = []
    for column, dtype in hits.schema.items():
        if dtype == pl.String:
            values = hits[column].drop_nulls()
            values = values.filter(matcher.mask(values)).unique().sort().to_list()
            out += _sql_in(column, values) if values else []
    return out


def _person_matcher(pseudo: str, raw: str | None, action_ids: Iterable[str]) -> Matcher:
    ids = set(action_ids)
    tokens = [pseudo, pseudo[_FRAGMENT], *(a for a in ids if len(a) >= _SHORT_ID)]
    if raw:
        tokens.append(raw)
    return Matcher(tokens, [a for a in ids if len(a) < _SHORT_ID])


# -- derived files -------------------------------------------------------------------------------
def _is_database(path: Path) -> bool:
    name = path.name.lower()
    if any(name.endswith(s) for s in _DATABASE) or name.endswith(("-wal", "-shm", "-journal")):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _read_tabular(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema=False)
    return pl.read_ndjson(path, infer_schema_length=None)


def _write_tabular(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.erasure-tmp")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.write_parquet(tmp)
    elif suffix == ".csv":
        frame.write_csv(tmp)
    else:
        frame.write_ndjson(tmp)
    os.replace(tmp, path)


def _scan_file(path: Path, matcher: Matcher, report: ErasureReport) -> None:
    if _is_database(path):
        if matcher.in_bytes(path.read_bytes()):
            report.needs_attention.append(str(path))
        return
    if matcher.in_text(str(path.name)):
        path.unlink()
        report.derived_files_removed.append(str(path))
        return
    if path.suffix.lower() in _TABULAR:
        try:
            frame = _read_tabular(path)
        except Exception:  # noqa: BLE001 - not parseable as its suffix says: treat it as plain bytes
            frame = None
        if frame is not None:
            hits = matcher.row_mask(frame)
            if not hits.any():
                return
            kept = frame.filter(~hits)
            if kept.is_empty():
                path.unlink()
                report.derived_files_removed.append(str(path))
            else:
                _write_tabular(kept, path)
                report.derived_files_rewritten.append(str(path))
            return
    if matcher.in_bytes(path.read_bytes()):
        path.unlink()
        report.derived_files_removed.append(str(path))


def _walk(roots: Iterable[Path], skip: Iterable[Path]) -> list[Path]:
    skip = [s.resolve() for s in skip]
    seen: set[Path] = set()
    out = []
    for root in roots:
        if not root.exists():
            continue
        for folder, dirs, files in os.walk(root, followlinks=False):
            here = Path(folder).resolve()
            dirs[:] = [d for d in dirs if (here / d).resolve() not in skip]
            for name in files:
                path = here / name
                if path not in seen and not path.is_symlink():
                    seen.add(path)
                    out.append(path)
    return sorted(out)


# -- the whole erasure ---------------------------------------------------------------------------
def _erase_table(name: str, uri: str, predicates: list[str], matcher: Matcher, report: ErasureReport) -> None:
    """Delete the rows, remove the files the deletes rewrote and older copies, purge the log if needed."""
    table_dir = _local(uri)
    rows, versions = _delete(uri, predicates)
    report.rows_removed[name] = rows
    for version in versions:
        for path in _removed_by(table_dir, version):
            if path.exists():
                path.unlink()
                report.data_files_removed.append(str(path))
    current = _current_files(uri)
    for path in _data_files(table_dir):
        if path.resolve() in current:
            continue
        try:
            mentions = matcher.row_mask(pl.read_parquet(path)).any()
        except Exception:  # noqa: BLE001 - an unreadable leftover: judge it by its bytes
            mentions = matcher.in_bytes(path.read_bytes())
        if mentions:
            path.unlink()
            report.older_copies_removed.append(str(path))
    if versions or _log_mentions(table_dir, matcher):
        report.log_files_removed[name] = _purge_history(uri, table_dir)
        if _log_mentions(table_dir, matcher):
            report.needs_attention.append(f"{table_dir / _LOG} (still mentions the person after the purge)")


def forget(store: EventStore, entity: str, key: bytes, state_dir: Path,
           mlflow_artifact_root: Path | None) -> ErasureReport:
    """Remove every row and every derived file that mentions one person; see the module docstring."""
    entity = entity.strip()
    if not entity:
        raise ValueError("forget needs an identifier")
    raw = None if entity.startswith(PREFIX) else entity
    pseudo = pseudonym(entity, key)
    report = ErasureReport(pseudonym=pseudo)

    with store.writer():   # no ingest writes, or reads the inbox, meanwhile
        predicates, action_ids = _person_rows(store, pseudo, raw, _person_matcher(pseudo, raw, []))
        report.actions = len(action_ids)
        matcher = _person_matcher(pseudo, raw, action_ids)
        for name, (uri, _, _) in store.tables().items():
            rows = _read(uri)
            if rows is None:
                continue
            if name not in predicates and not name.startswith("actions/") and name != "outcomes":
                # Quarantine (raw rows as JSON), audit, the ingest ledger, any later table: by content.
                key_column = "quarantine_id" if name == "quarantine" else None
                predicates[name] = _text_table_predicates(rows.collect(), matcher, key_column)
            _erase_table(name, uri, predicates.get(name, []), matcher, report)

        # Derived files, under the same lock so no ingest reads an inbox file while it is rewritten.
        roots = [Path(state_dir)] + ([Path(mlflow_artifact_root)] if mlflow_artifact_root else [])
        for path in _walk(roots, skip=[_local(store.uri)]):
            _scan_file(path, matcher, report)
    return report
