#!/usr/bin/env python
"""Ingest benchmark: paired lead_scoring action-outcome rows, CSV and Parquet, into a big store.

Runnable by anyone from the repository root::

    .venv/bin/python bench/ingest.py            # 1,000,000 rows into a 10,000,000-row store (~2 min on 2 cores)
    .venv/bin/python bench/ingest.py --quick    # 100,000 rows into 1,000,000 (~15 s)
    .venv/bin/python bench/ingest.py --workdir /tmp/bench   # keep data and store, reuse them next time

What it does:

1. generates ``--rows`` paired rows (action columns + observed_at, outcome, revenue) with numpy/polars,
   deterministically per action id, and writes them as CSV and as Parquet; about 1 % of the rows repeat
   an action that is already stored (a later export of the same lead), 0.5 % are repeated within the
   file, 0.1 % are invalid (quarantined), 35 % carry no outcome yet;
2. prefills a Delta store (``features.store.EventStore``) with ``--store-rows`` stored actions and their
   outcomes (not timed);
3. times ``features.ingest.ingest_paths([file], store, clock, key)`` end to end (read, validate,
   deduplicate, pseudonymise, conflict check against the store, insert, quarantine, ledger) on a fresh
   copy of the prefilled store per measurement (Parquet data files hard-linked: Delta never rewrites
   them; logs copied), and shows where the time goes by timing the functions ``ingest_file`` calls,
   and the CPU work of each step run one after the other (``cpu_budget``: what 2 cores must get through);
4. measures peak memory of ingesting a ``--stream-rows`` file, CSV and Parquet, each in a child process
   (its VmHWM), so the benchmark's own memory does not count;
5. times the obvious pandas way (read, row-wise checks with ``DataFrame.apply``, drop duplicates,
   pseudonymise per value, ``deltalake.write_deltalake`` append) on ``--pandas-rows`` rows;
6. prints a table and writes the figures to ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import hmac
import inspect
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from features.contract import action_table_schema, outcome_table_schema  # noqa: E402
from features.spec import load_specs  # noqa: E402

MODEL = "lead_scoring"
NOW = datetime(2026, 4, 1, tzinfo=UTC)
KEY = b"bench-key"
RESULTS = REPO / "bench" / "results" / "ingest.json"
GiB = 1024 ** 3
MiB = 1024 ** 2
CHUNK = 1_000_000            # rows generated and written at a time
ROW_GROUP = 262_144          # polars' default Parquet row group size

SOURCES = ["website_form", "trade_fair", "referral", "cold_outreach", "partner", "lead_marketplace"]
INDUSTRIES = ["manufacturing", "logistics", "retail", "it_services", "construction", "healthcare"]
REGIONS = ["nord", "sued", "west", "ost", "dach_other"]


# -- deterministic data ---------------------------------------------------------------------------
def _mix(ids: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (id, salt): the same id always gets the same values, in every file and the store."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt * 0xD1B54A32D192ED03 % 2 ** 64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(ids, salt) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _pick(ids: np.ndarray, salt: int, values: list[str], weights: list[float]) -> pl.Series:
    edges = np.cumsum(weights) / np.sum(weights)
    index = np.minimum(np.searchsorted(edges, _uniform(ids, salt), side="right"), len(values) - 1)
    return pl.Series(index, dtype=pl.UInt32).replace_strict(list(range(len(values))), values, return_dtype=pl.String)


def paired_rows(ids: np.ndarray, horizon: int, stored: bool, bad_share: float = 0.0) -> pl.DataFrame:
    """Paired action + outcome rows for lead_scoring, one per id (typed: what a Parquet export holds).

    ``stored``: entity ids already pseudonymised (as the store holds them, and as an export from a
    system that pseudonymises upstream carries them); otherwise raw e-mail addresses.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    start = NOW - timedelta(days=365)
    # decided_at grows with the id (older ids were stored earlier) plus up to an hour of jitter.
    offset_s = (ids / max(horizon, 1) * 357 * 86_400 + _uniform(ids, 1) * 3600).astype(np.int64)
    decided = pl.Series("decided_at", offset_s * 1_000_000 + int(start.timestamp() * 1_000_000)).cast(pl.Datetime("us", "UTC"))
    id_text = pl.Series(ids).cast(pl.String)
    if stored:
        entity = pl.Series(_mix(ids, 2)).cast(pl.String).str.zfill(20)
        entity = ("pid_" + entity + "0000").alias("entity_id")
    else:
        entity = ("lead" + id_text + "@kunde.example.de").alias("entity_id")
    score = np.round(_uniform(ids, 3), 4)
    threshold = 0.42
    demo = _uniform(ids, 9) < 0.25
    lead = pl.DataFrame({
        "action_id": "act-" + id_text,
        "model": pl.Series([MODEL]).new_from_index(0, n),
        "model_version": pl.Series(["7"]).new_from_index(0, n),
        "entity_id": entity,
        "decided_at": decided,
        "score": score,
        "threshold": np.full(n, threshold),
        "decision": np.where(score >= threshold, "propose_meeting", "nurture"),
        "propensity": np.round(0.9 + 0.1 * _uniform(ids, 4), 3),
        "source": _pick(ids, 5, SOURCES, [30, 15, 15, 20, 15, 5]),
        "industry": _pick(ids, 6, INDUSTRIES, [1] * len(INDUSTRIES)),
        "region": _pick(ids, 7, REGIONS, [1] * len(REGIONS)),
        "company_size": (5 + _uniform(ids, 8) ** 3 * 5000).astype(np.int64),
        "pages_visited": (_uniform(ids, 10) * 40).astype(np.int64),
        "email_opens": (_uniform(ids, 11) * 15).astype(np.int64),
        "requested_demo": demo,
    })
    # Outcomes: 65 % observed 3-30 days after the decision (none if that is still in the future).
    has = _uniform(ids, 12) < 0.65
    observed_us = decided.to_physical().to_numpy() + ((3 + _uniform(ids, 13) * 27) * 86_400).astype(np.int64) * 1_000_000
    has &= observed_us < int(NOW.timestamp() * 1e6)
    converted = _uniform(ids, 14) < (0.08 + 0.3 * score)
    lead = lead.with_columns(
        pl.Series("observed_at", observed_us).cast(pl.Datetime("us", "UTC")),
        pl.Series("outcome", np.where(converted, "converted", "lost")),
        pl.Series("revenue", np.round(500 + _uniform(ids, 15) * 7500, 2)),
        pl.Series("__has", has), pl.Series("__conv", converted),
    ).with_columns(
        pl.when("__has").then(pl.col("observed_at")).alias("observed_at"),
        pl.when("__has").then(pl.col("outcome")).alias("outcome"),
        pl.when(pl.col("__has") & pl.col("__conv")).then(pl.col("revenue")).alias("revenue"),
    ).drop("__has", "__conv")
    if bad_share:
        lead = _spoil(lead, ids, bad_share)
    return lead


def _spoil(rows: pl.DataFrame, ids: np.ndarray, share: float) -> pl.DataFrame:
    """Make ``share`` of the rows invalid in ways both formats can carry (each is quarantined)."""
    bad = pl.Series(_uniform(ids, 20) < share)
    kind = pl.Series(_mix(ids, 21) % np.uint64(4)).cast(pl.Int64)
    return rows.with_columns(
        pl.when(bad & (kind == 0)).then(pl.lit(1.7)).otherwise(pl.col("score")).alias("score"),
        pl.when(bad & (kind == 1)).then(pl.lit(NOW + timedelta(days=2))).otherwise(pl.col("decided_at")).alias("decided_at"),
        pl.when(bad & (kind == 2)).then(pl.lit("call_now")).otherwise(pl.col("decision")).alias("decision"),
        pl.when(bad & (kind == 3)).then(pl.lit("")).otherwise(pl.col("action_id")).alias("action_id"),
    )


def as_csv_text(rows: pl.DataFrame) -> pl.DataFrame:
    """How a CRM export writes the rows: ISO timestamps with offset, numbers and true/false as text."""
    return rows.with_columns(
        pl.col(pl.Datetime).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    )


def file_ids(start: int, rows: int, store_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of one file: new ids from ``start``, 1 % already stored, 0.5 % repeated within the file."""
    rng = np.random.default_rng(seed)
    n_stored = min(rows // 100, store_rows)
    n_repeat = rows // 200
    n_new = rows - n_stored - n_repeat
    new = np.arange(start, start + n_new, dtype=np.int64)
    again = rng.choice(store_rows, size=n_stored, replace=False) if n_stored else np.empty(0, np.int64)
    repeat = rng.choice(new, size=n_repeat, replace=False) if n_repeat else np.empty(0, np.int64)
    ids = np.concatenate([new, repeat])
    ids.sort(kind="stable")
    return ids, np.sort(again)


def write_file(base: Path, start: int, rows: int, store_rows: int, horizon: int, seed: int,
               bad_share: float) -> tuple[Path, Path, dict]:
    """Write ``base``.csv and ``base``.parquet chunk by chunk (bounded memory)."""
    import pyarrow.parquet as pq

    new_ids, stored_ids = file_ids(start, rows, store_rows, seed)
    csv_path, parquet_path = base.with_suffix(".csv"), base.with_suffix(".parquet")
    writer = None
    stored_per_chunk = np.array_split(stored_ids, max(1, -(-len(new_ids) // CHUNK)))
    with open(csv_path, "wb") as csv_file:
        for i, lo in enumerate(range(0, len(new_ids), CHUNK)):
            part = pl.concat([paired_rows(new_ids[lo:lo + CHUNK], horizon, stored=False, bad_share=bad_share),
                              paired_rows(stored_per_chunk[i], horizon, stored=True)]).sort("decided_at", maintain_order=True)
            as_csv_text(part).write_csv(csv_file, include_header=i == 0)
            table = part.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(parquet_path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()
    facts = {"rows": rows, "already_stored": len(stored_ids), "repeated_in_file": rows // 200}
    return csv_path, parquet_path, facts


# -- the store ------------------------------------------------------------------------------------
def _as_table(rows: pl.DataFrame, schema: dict) -> pl.DataFrame:
    """The table's columns in its order; optional ones the generator does not produce (e.g. ``share_kept``) null."""
    return rows.select([pl.col(c) if c in rows.columns else pl.lit(None).alias(c) for c in schema]).cast(schema)


def prefill_store(uri: Path, store_rows: int, horizon: int, specs) -> None:
    """``store_rows`` stored actions (pseudonymised) and their outcomes, appended in chunks."""
    action_schema = action_table_schema(specs[MODEL])
    outcome_schema = outcome_table_schema()
    actions_uri, outcomes_uri = uri / "actions" / MODEL, uri / "outcomes"
    actions_uri.mkdir(parents=True, exist_ok=True)
    outcomes_uri.mkdir(parents=True, exist_ok=True)
    step = 2_000_000
    for lo in range(0, store_rows, step):
        ids = np.arange(lo, min(lo + step, store_rows), dtype=np.int64)
        rows = paired_rows(ids, horizon, stored=True)
        ingested = pl.lit(NOW - timedelta(days=1)).cast(pl.Datetime("us", "UTC"))
        provenance = [pl.lit(f"prefill{lo // step:04d}").alias("ingest_id"), ingested.alias("ingested_at"),
                      pl.lit(f"prefill/{lo // step:04d}.csv").alias("source_file")]
        rows = rows.with_columns(provenance)
        _as_table(rows, action_schema).write_delta(str(actions_uri), mode="append")
        _as_table(rows.filter(pl.col("outcome").is_not_null()), outcome_schema).write_delta(str(outcomes_uri), mode="append")
        del rows
    # Bring the tables to the store's current layout the way an operator would (e.g. record the
    # prefill ingests as complete in the ingest ledger), whatever the layout version is.
    try:
        from features.migrate import migrate
    except ImportError:  # a release without layout versions: the tables are the store
        return
    from features.store import EventStore

    migrate(EventStore(str(uri), specs), NOW - timedelta(days=1))


def copy_store(source: Path, target: Path) -> Path:
    """A fresh store: Parquet data files hard-linked (Delta never rewrites them), everything else copied."""
    if target.exists():
        shutil.rmtree(target)
    for folder, _, files in os.walk(source):
        rel = Path(folder).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            src, dst = Path(folder) / name, target / rel / name
            if "_delta_log" in rel.parts or not name.endswith(".parquet"):
                shutil.copy2(src, dst)
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    return target


# -- timing the real ingest -----------------------------------------------------------------------
class StageTimer:
    """Wraps the functions ``ingest_file`` calls to see where the time goes (overhead: microseconds).

    Names that do not exist (the ingest module changed) are skipped; what is not covered shows
    as ``other`` (e.g. hashing the file, the outcome model lookup). Some steps run in background
    threads (hashing the file, reading and pseudonymising the next batch, reading the key indexes,
    writing the Parquet files): their times overlap the others', so the steps can add up to more
    than the total; ``append_finish`` is the wait for the writers at the end.
    """

    MODULE_FUNCS = ["_file_digest_and_check", "read_events", "read_batches", "validate_rows", "pseudonymise",
                    "_conflicts_with_store", "_settle"]
    STORE_METHODS = ["append_actions", "insert_outcomes", "append_outcomes", "insert_quarantine", "record_ingest",
                     "recover", "action_index", "outcome_index"]
    CACHE_METHODS = [("KnownActions", "candidates", "known_action_ids"), ("KeyIndex", "contains", "key_lookups"),
                     ("TableStream", "put", "append_queue"), ("TableStream", "close", "append_finish")]

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[object, str, object]] = []

    def _wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None or not callable(original):
            return

        def add(seconds: float) -> None:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

        def timed_steps(generator):
            """A generator (batched reading) is timed step by step: the consumer's work in between is not its time."""
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(generator)
                except StopIteration:
                    add(time.perf_counter() - t0)
                    return
                add(time.perf_counter() - t0)
                yield item

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                add(time.perf_counter() - t0)
            return timed_steps(result) if inspect.isgenerator(result) else result

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def __enter__(self) -> "StageTimer":
        import features.ingest as ingest
        from features.store import EventStore

        for name in self.MODULE_FUNCS:
            self._wrap(ingest, name, name.strip("_"))
        for name in self.STORE_METHODS:
            self._wrap(EventStore, name, name)
        for owner, name, label in self.CACHE_METHODS:
            if hasattr(ingest, owner):
                self._wrap(getattr(ingest, owner), name, label)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def run_ingest(path: Path, store_uri: Path, specs, stages: bool = True) -> tuple[float, dict, dict]:
    from features.clock import SimulatedClock
    from features.ingest import ingest_paths
    from features.store import EventStore

    store = EventStore(str(store_uri), specs)
    timer = StageTimer() if stages else contextlib.nullcontext(None)
    with timer as t:
        t0 = time.perf_counter()
        report = ingest_paths([path], store, SimulatedClock(NOW), KEY)
        seconds = time.perf_counter() - t0
    breakdown = dict(t.seconds) if t else {}
    if breakdown:
        breakdown["other"] = max(0.0, seconds - sum(breakdown.values()))
    return seconds, report.as_dict(), breakdown


def cpu_budget(path: Path, store_uri: Path, specs) -> dict[str, float]:
    """CPU seconds (user + system) of each step of the ingest, run one after the other in this thread.

    The ingest overlaps these steps on the cores (reading ahead, index loads and writes in background
    threads), so its wall time is at least their sum divided by the cores: the bound the speed targets
    meet or not. Writes go to a scratch Delta table, not the store; no ledger, no settle of held rows.
    """
    from deltalake import write_deltalake

    from features.contract import action_table_schema
    from features.ingest import _provenance, _pseudonymised, read_batches
    from features.store import EventStore, with_action_index, with_outcome_index, writer_properties
    from features.validate import validate_rows

    cpu: dict[str, float] = {}

    def step(name: str, work):
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = work()
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu[name] = cpu.get(name, 0.0) + (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return result

    store = EventStore(str(store_uri), specs)
    spec = specs[MODEL]
    provenance = _provenance("budget", NOW, str(path))
    batches, reading = [], read_batches(path)
    while (batch := step("read", lambda: next(reading, None))) is not None:
        batches.append(batch)
    batches = [(step("pseudonymise", lambda b=b: _pseudonymised(b, KEY)), first) for b, first in batches]
    validated = [step("validate", lambda b=b, f=f: validate_rows(b, specs, NOW, f)) for b, f in batches]
    schema = action_table_schema(spec)
    actions = [step("key_and_content_hashes", lambda v=v: with_action_index(
        v.actions[MODEL].cast({c: d for c, d in schema.items() if c in v.actions[MODEL].columns}), spec)
        .with_columns(provenance)) for v in validated]
    outcomes = [step("key_and_content_hashes", lambda v=v: with_outcome_index(v.outcomes).with_columns(provenance))
                for v in validated]
    action_index = step("load_key_indexes", lambda: store.action_index(MODEL))
    outcome_index = step("load_key_indexes", store.outcome_index)
    for rows in actions:
        step("key_lookups", lambda r=rows: action_index.contains(r.get_column("id_hash")))
    for rows in outcomes:
        step("key_lookups", lambda r=rows: outcome_index.contains(r.get_column("key_hash")))
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-budget-"))
    try:
        for table, frames, prepare in (("actions", actions, lambda r: store._action_rows(MODEL, r)),
                                       ("outcomes", outcomes, store._outcome_rows)):
            for rows in frames:
                prepared = prepare(rows)
                step("write", lambda p=prepared, t=table: write_deltalake(
                    str(scratch / t), p.to_arrow(compat_level=pl.CompatLevel.newest()), mode="append",
                    writer_properties=writer_properties(p.schema)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cpu


def child_peak(path: Path, store_uri: Path) -> dict:
    """Ingest ``path`` in a fresh interpreter; its peak resident memory (VmHWM) is the figure."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench.ingest as b; "
            "print(json.dumps(b._child(sys.argv[2], sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(path), str(store_uri)],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"the peak-memory child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(path: str, store_uri: str) -> dict:
    specs = load_specs(REPO / "data" / "specs")
    import features.ingest  # noqa: F401  (imports count in the baseline, not in the ingest)

    baseline = _vm("VmRSS")
    seconds, report, _ = run_ingest(Path(path), Path(store_uri), specs, stages=False)
    peak = _vm("VmHWM")
    if peak != peak:  # no /proc: ru_maxrss is KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline, "report": report}


# -- the obvious pandas way -----------------------------------------------------------------------
def _pandas_check(row, spec, now: datetime) -> str:
    """Row-wise checks, the same rules as features.validate (short reasons)."""
    import pandas as pd

    def text(value) -> str:
        if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
            return ""
        return str(value).strip()

    def when(value):
        if isinstance(value, pd.Timestamp):
            return None if value is pd.NaT or value.tzinfo is None else value.to_pydatetime()
        value = text(value)
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else None

    reasons = []
    for name in ("action_id", "model_version", "entity_id", "decision", "model"):
        if not text(row[name]):
            reasons.append(f"{name} is empty")
    if text(row["model"]) and text(row["model"]) != spec.name:
        reasons.append(f"unknown model '{row['model']}'")
    decided = when(row["decided_at"])
    if decided is None:
        reasons.append(f"decided_at '{row['decided_at']}' is not a timestamp with a time zone")
    elif decided > now:
        reasons.append("decided_at is in the future")
    for name in ("score", "threshold", "propensity"):
        try:
            value = float(text(row[name]))
            if not 0 <= value <= 1:
                reasons.append(f"{name} {value} is outside [0, 1]")
        except ValueError:
            reasons.append(f"{name} '{row[name]}' is not a number")
    for feature in spec.features:
        value = text(row[feature.name])
        if not value:
            continue
        if feature.type == "numeric":
            try:
                float(value)
            except ValueError:
                reasons.append(f"{feature.name} '{value}' is not a number")
        elif feature.type == "boolean" and value.lower() not in ("true", "1", "yes", "t", "y", "false", "0", "no", "f", "n"):
            reasons.append(f"{feature.name} '{value}' is not a boolean")
    if text(row["decision"]) and text(row["decision"]) not in spec.decisions:
        reasons.append(f"decision '{row['decision']}' is not one of {spec.decisions}")
    if bool(text(row["outcome"])) != bool(text(row["observed_at"])):
        reasons.append("outcome and observed_at must be given together")
    if text(row["outcome"]):
        observed = when(row["observed_at"])
        if observed is None:
            reasons.append("observed_at is not a timestamp")
        elif observed > now:
            reasons.append("observed_at is in the future")
        elif decided is not None and observed < decided:
            reasons.append("observed_at is before decided_at")
        if text(row["outcome"]) not in spec.outcomes.values:
            reasons.append(f"outcome '{row['outcome']}' is not one of {spec.outcomes.values}")
    if text(row["revenue"]):
        try:
            if float(text(row["revenue"])) < 0:
                reasons.append("revenue is negative")
        except ValueError:
            reasons.append("revenue is not a number")
    return "; ".join(reasons)


def pandas_ingest(path: Path, store_uri: Path, specs) -> tuple[float, dict]:
    """Read with pandas, validate row by row, drop duplicates, pseudonymise, append to Delta."""
    import pandas as pd
    import pyarrow as pa
    from deltalake import write_deltalake

    spec = specs[MODEL]
    action_schema, outcome_schema = action_table_schema(spec), outcome_table_schema()
    t0 = time.perf_counter()
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    reasons = df.apply(_pandas_check, axis=1, args=(spec, NOW))
    good = df[reasons == ""].copy()
    bad = df[reasons != ""]
    for name in ("decided_at", "observed_at"):
        good[name] = pd.to_datetime(good[name].replace("", None), utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    for name in ("score", "threshold", "propensity", "revenue", "company_size", "pages_visited", "email_opens"):
        good[name] = pd.to_numeric(good[name].replace("", None)).astype("float64")
    if good["requested_demo"].dtype != bool:
        good["requested_demo"] = good["requested_demo"].str.strip().str.lower().isin(["true", "1", "yes", "t", "y"])
    key = KEY
    good["entity_id"] = good["entity_id"].map(
        lambda v: v if v.startswith("pid_") else "pid_" + hmac.new(key, v.encode(), hashlib.sha256).hexdigest()[:24])
    good["ingest_id"], good["ingested_at"], good["source_file"] = "pandas", pd.Timestamp(NOW).as_unit("us"), str(path)
    good["model"] = good["model"].astype(str)
    actions = good.drop_duplicates(subset="action_id")[list(action_schema)]
    outcomes = good[good["outcome"].notna() & (good["outcome"] != "")].drop_duplicates(
        subset=["action_id", "observed_at", "outcome"]).reindex(columns=list(outcome_schema))   # absent optional: NaN
    # schema_mode merge: the store's tables may have columns of their own (e.g. key hashes) it does not write.
    write_deltalake(str(store_uri / "actions" / MODEL), pa.Table.from_pandas(actions, preserve_index=False,
                    schema=pl.DataFrame(schema=action_schema).to_arrow().schema), mode="append", schema_mode="merge")
    write_deltalake(str(store_uri / "outcomes"), pa.Table.from_pandas(outcomes, preserve_index=False,
                    schema=pl.DataFrame(schema=outcome_schema).to_arrow().schema), mode="append", schema_mode="merge")
    quarantine = pd.DataFrame({"reason": bad.index.astype(str) + ": " + reasons[reasons != ""]})
    write_deltalake(str(store_uri / "quarantine_pandas"), quarantine, mode="append")
    seconds = time.perf_counter() - t0
    return seconds, {"rows_read": len(df), "actions_stored": len(actions), "outcomes_stored": len(outcomes),
                     "quarantined": len(bad)}


# -- main -----------------------------------------------------------------------------------------
def machine() -> dict:
    import deltalake
    import pandas

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    # On a shared machine the load says how far the times are from what the code can do.
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "polars": pl.__version__, "deltalake": deltalake.__version__,
            "pandas": pandas.__version__, "numpy": np.__version__}


def _fmt(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per timed file (default 1,000,000)")
    parser.add_argument("--store-rows", type=int, default=10_000_000, help="actions already stored (default 10,000,000)")
    parser.add_argument("--stream-rows", type=int, default=5_000_000, help="rows of the peak-memory file (default 5,000,000)")
    parser.add_argument("--pandas-rows", type=int, default=100_000, help="rows the pandas baseline ingests (default 100,000)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per format; the best counts (default 1)")
    parser.add_argument("--bad-share", type=float, default=0.001, help="share of invalid rows (default 0.001)")
    parser.add_argument("--quick", action="store_true", help="100k rows, 1M stored, 500k streamed, 20k pandas rows")
    parser.add_argument("--workdir", type=Path, help="keep data and store here and reuse them (default: a temp dir, removed)")
    parser.add_argument("--skip-stream", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON figures (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.store_rows, args.stream_rows, args.pandas_rows = 100_000, 1_000_000, 500_000, 20_000

    specs = load_specs(REPO / "data" / "specs")
    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-")) if temp else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    horizon = args.store_rows + max(args.rows, args.stream_rows)
    try:
        # Data and prefilled store, reused from --workdir when made with the same sizes.
        marker = work / "made.json"
        made = {"rows": args.rows, "store_rows": args.store_rows, "stream_rows": args.stream_rows,
                "pandas_rows": args.pandas_rows, "bad_share": args.bad_share, "stream": not args.skip_stream, "version": 1,
                # a store made by other store code (e.g. another layout version) is made again
                "store_code": hashlib.sha256(b"".join((REPO / "features" / f).read_bytes() for f in
                                                      ("store.py", "migrate.py", "contract.py")
                                                      if (REPO / "features" / f).exists())).hexdigest()[:16]}
        if not (marker.exists() and json.loads(marker.read_text()) == made):
            for old in ("data", "store"):
                shutil.rmtree(work / old, ignore_errors=True)
            (work / "data").mkdir()
            t0 = time.perf_counter()
            start = args.store_rows
            write_file(work / "data" / "pairs", start, args.rows, args.store_rows, horizon, 1, args.bad_share)
            if not args.skip_stream:
                write_file(work / "data" / "stream", start, args.stream_rows, args.store_rows, horizon, 2, args.bad_share)
            write_file(work / "data" / "pandas", start, args.pandas_rows, args.store_rows, horizon, 3, args.bad_share)
            print(f"generated files in {time.perf_counter() - t0:.1f} s", flush=True)
            t0 = time.perf_counter()
            prefill_store(work / "store", args.store_rows, horizon, specs)
            print(f"prefilled store with {_fmt(args.store_rows)} actions in {time.perf_counter() - t0:.1f} s", flush=True)
            marker.write_text(json.dumps(made))
        data, prefilled = work / "data", work / "store"
        sizes = {p.name: p.stat().st_size / MiB for p in sorted(data.iterdir())}

        results: dict[str, float] = {}
        details: dict[str, dict] = {}
        for kind in ("parquet", "csv"):
            best = None
            for _ in range(max(1, args.repeat)):
                store = copy_store(prefilled, work / "run-store")
                seconds, report, stages = run_ingest(data / f"pairs.{kind}", store, specs)
                if best is None or seconds < best[0]:
                    best = (seconds, report, stages)
            seconds, report, stages = best
            results[f"{kind}_seconds"] = seconds
            results[f"{kind}_rows_per_s"] = args.rows / seconds
            details[kind] = {"report": report, "stages": stages}
            print(f"{kind:8s} {_fmt(args.rows)} rows in {seconds:.2f} s = {_fmt(args.rows / seconds)} rows/s  {report}", flush=True)

        for kind in ("parquet", "csv"):
            # After every timed run (its allocations would slow the next one). Each step's least CPU over the
            # repeats: page faults and first calls add noise run to run.
            budgets = [cpu_budget(data / f"pairs.{kind}", prefilled, specs) for _ in range(max(1, args.repeat))]
            details[kind]["cpu"] = {name: min(b[name] for b in budgets) for name in budgets[0]}

        if not args.skip_stream:
            for kind in ("parquet", "csv"):
                store = copy_store(prefilled, work / "run-store")
                peak = child_peak(data / f"stream.{kind}", store)
                results[f"stream_{kind}_peak_mib"] = peak["peak_mib"]
                results[f"stream_{kind}_baseline_mib"] = peak["baseline_mib"]
                results[f"stream_{kind}_rows_per_s"] = args.stream_rows / peak["seconds"]
                details[f"stream_{kind}"] = peak
                print(f"stream   {kind:8s} {_fmt(args.stream_rows)} rows: peak {peak['peak_mib']:,.0f} MiB "
                      f"(interpreter + imports {peak['baseline_mib']:,.0f} MiB), {peak['seconds']:.1f} s", flush=True)
            results["stream_peak_mib"] = max(results["stream_parquet_peak_mib"], results["stream_csv_peak_mib"])

        for kind in ("parquet", "csv"):
            store = copy_store(prefilled, work / "run-store")
            seconds, report = pandas_ingest(data / f"pandas.{kind}", store, specs)
            results[f"pandas_{kind}_seconds"] = seconds
            results[f"pandas_{kind}_rows_per_s"] = args.pandas_rows / seconds
            details[f"pandas_{kind}"] = {"report": report}
            print(f"pandas   {kind:8s} {_fmt(args.pandas_rows)} rows in {seconds:.2f} s = "
                  f"{_fmt(args.pandas_rows / seconds)} rows/s  {report}", flush=True)
        results["pandas_rows_per_s"] = results["pandas_parquet_rows_per_s"]
        results["parquet_vs_pandas_ratio"] = results["parquet_rows_per_s"] / results["pandas_parquet_rows_per_s"]
        results["csv_vs_pandas_ratio"] = results["csv_rows_per_s"] / results["pandas_csv_rows_per_s"]
        shutil.rmtree(work / "run-store", ignore_errors=True)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)

    # -- report -----------------------------------------------------------------------------------
    targets = {"parquet_rows_per_s": (1_000_000, ">="), "csv_rows_per_s": (500_000, ">="), "stream_peak_mib": (2048, "<")}
    print()
    print(f"ingest of {_fmt(args.rows)} paired rows into a store of {_fmt(args.store_rows)} actions "
          f"({machine()['cpus']} cores; files: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in sizes.items()) + ")")
    print(f"{'figure':28s} {'value':>14s} {'target':>14s}  met")
    for name, value in results.items():
        if name.endswith("_seconds") or name.endswith("_baseline_mib"):
            continue
        target = targets.get(name)
        met = "" if target is None else ("yes" if (value >= target[0] if target[1] == ">=" else value < target[0]) else "NO")
        shown = f"{value:,.1f}" if "ratio" in name else _fmt(value)
        print(f"{name:28s} {shown:>14s} {(target[1] + ' ' + _fmt(target[0])) if target else '':>14s}  {met}")
    for kind in ("parquet", "csv"):
        stages = details[kind]["stages"]
        if stages:
            total = results[f"{kind}_seconds"]
            print(f"\nwhere the {kind} time goes ({total:.2f} s; steps in background threads overlap the others):")
            for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
                print(f"  {name:24s} {seconds:7.2f} s  {seconds / total:6.1%}")
            cpu = details[kind]["cpu"]
            cores = machine()["cpus"]
            print(f"CPU work of the {kind} ingest, step by step in one thread ({sum(cpu.values()):.2f} CPU s; on {cores} "
                  f"cores the wall time is at least {sum(cpu.values()) / cores:.2f} s = at most "
                  f"{_fmt(args.rows * cores / sum(cpu.values()))} rows/s):")
            for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
                print(f"  {name:24s} {seconds:7.2f} CPU s")
    print(f"\nparquet vs pandas: {results['parquet_vs_pandas_ratio']:.1f}x   csv vs pandas: {results['csv_vs_pandas_ratio']:.1f}x "
          f"(pandas timed on {_fmt(args.pandas_rows)} rows)")

    figures = {**{k: round(v, 3) for k, v in results.items()},
               "rows": args.rows, "store_rows": args.store_rows, "stream_rows": args.stream_rows if not args.skip_stream else 0,
               "pandas_rows": args.pandas_rows,
               **{f"{kind}_stage_{name}_seconds": round(s, 3) for kind in ("parquet", "csv")
                  for name, s in details[kind]["stages"].items()},
               **{f"{kind}_cpu_{name}_seconds": round(s, 3) for kind in ("parquet", "csv")
                  for name, s in details[kind]["cpu"].items()},
               **{f"{kind}_cpu_total_seconds": round(sum(details[kind]["cpu"].values()), 3) for kind in ("parquet", "csv")},
               **{f"machine_{k}": v for k, v in machine().items()},
               "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
