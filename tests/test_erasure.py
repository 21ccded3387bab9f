"""Erasure on a real Delta store filled by the real ingest: one person goes, everything else stays."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from features.clock import SimulatedClock
from features.erasure import Matcher, forget
from features.ingest import ingest_paths
from features.maintenance import compact, vacuum
from features.pseudonymise import pseudonym
from features.store import EventStore
from tests.helpers import lead_action

KEY = b"test-erasure-key"
ANNA, BOB = "anna.schmidt@kunde.de", "bob.meier@kunde.de"
ANNA_IDS, BOB_IDS = ["x-101", "x-102", "x-103"], ["x-201", "x-202", "x-203"]


def _leaves(series: pl.Series):
    """Every string value inside a column, however nested (structs, lists), as flat string series."""
    dtype = series.dtype
    if isinstance(dtype, pl.Struct):
        for name in [f.name for f in dtype.fields]:
            yield from _leaves(series.struct.field(name))
    elif isinstance(dtype, pl.List):
        yield from _leaves(series.explode())
    elif isinstance(dtype, pl.Array):
        yield from _leaves(series.arr.explode())
    elif dtype == pl.Binary:
        yield series.cast(pl.String, strict=False)
    else:
        try:
            yield series.cast(pl.String)
        except pl.exceptions.InvalidOperationError:   # e.g. a map of a checkpoint: its Python repr
            yield pl.Series([None if v is None else str(v) for v in series.to_list()], dtype=pl.String)


def grep(root: Path, needles: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Files under root that contain a needle: in their bytes, and in the decoded values of Parquet files."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip):
        data = path.read_bytes()
        found = {n for n in needles if n.encode("utf-8") in data}
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            for column in frame.columns:
                for leaf in _leaves(frame.get_column(column)):
                    found |= {n for n in needles if leaf.str.contains(n, literal=True).any()}
        hits += [f"{path}: {n}" for n in sorted(found)]
    return hits


def _mentions(path: Path, anna_pid: str) -> bool:
    """Does a Parquet file hold any of Anna's values (her pseudonym, e-mail, or an action id of hers)."""
    cells = [str(v) for row in pq.read_table(path).to_pylist() for v in row.values()]
    return any(anna_pid in c or ANNA in c or c in ANNA_IDS or any(f'"{i}"' in c for i in ANNA_IDS) for c in cells)


def data_files(uri: str) -> set[Path]:
    return {p for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts}


def all_rows(uri: str) -> pl.DataFrame:
    """Every row, complete ingest or not."""
    return pl.read_delta(uri)


def _csv(path: Path, rows: list[dict]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


@pytest.fixture
def filled(tmp_path, specs):
    """A store with actions, outcomes and quarantined rows of Anna and Bob, compacted once, plus derived files."""
    home = tmp_path / "loop"
    store = EventStore(str(home / "store"), specs)
    clock = SimulatedClock(datetime(2026, 2, 1, tzinfo=UTC))
    # Two ingests, so the tables have several files, some holding only Bob's rows.
    first = _csv(tmp_path / "actions-1.csv", [
        lead_action("x-101", entity_id=ANNA), lead_action("x-201", entity_id=BOB),
        lead_action("x-109", entity_id=ANNA, score="1.7"),       # quarantined: the raw row holds Anna's e-mail
        lead_action("x-209", entity_id=BOB, score="1.7")])
    outcomes = _csv(tmp_path / "outcomes-1.csv", [
        {"action_id": "x-101", "observed_at": "2026-01-20T09:00:00Z", "outcome": "converted"},
        {"action_id": "x-201", "observed_at": "2026-01-21T09:00:00Z", "outcome": "lost"},
        {"action_id": "x-101", "observed_at": "tomorrow", "outcome": "lost"},   # quarantined: only Anna's action id
        {"action_id": "x-201", "observed_at": "tomorrow", "outcome": "lost"}])
    ingest_paths([first, outcomes], store, clock, KEY)
    second = _csv(tmp_path / "actions-2.csv", [lead_action(i, entity_id=ANNA, decided_at="2026-01-12T10:00:00+01:00")
                                               for i in ANNA_IDS[1:]])
    third = _csv(tmp_path / "actions-3.csv", [lead_action(i, entity_id=BOB, decided_at="2026-01-13T10:00:00+01:00")
                                              for i in BOB_IDS[1:]])
    outcomes2 = _csv(tmp_path / "outcomes-2.csv", [
        {"action_id": "x-102", "observed_at": "2026-01-25T09:00:00Z", "outcome": "lost"},
        {"action_id": "x-202", "observed_at": "2026-01-25T09:00:00Z", "outcome": "converted"}])
    ingest_paths([second, third, outcomes2], store, clock, KEY)
    # Compaction leaves the small files on disk until a vacuum: old copies with Anna's rows, and old
    # files with only Bob's, which an erasure must not touch (a blanket vacuum would remove them).
    compact(store)
    DeltaTable(store.actions_uri("lead_scoring")).delete("action_id = 'x-203'")   # an earlier, unrelated delete

    # Derived files: reports, MLflow artifacts, inbox exports, a database.
    anna_pid, bob_pid = pseudonym(ANNA, KEY), pseudonym(BOB, KEY)
    (home / "reports").mkdir(parents=True)
    (home / "reports" / "case.html").write_text(f"<td>{anna_pid}</td>", encoding="utf-8")
    (home / "reports" / "unrelated.html").write_text(
        f"<p>{bob_pid} joanna.schmidt@kunde.de x-1011 {anna_pid}0 var x=1;</p>", encoding="utf-8")
    artifacts = home / "mlflow" / "artifacts"
    (artifacts / "run1").mkdir(parents=True)
    (artifacts / "run1" / "input_example.json").write_text(json.dumps({"entity": ANNA, "pages": 3}), encoding="utf-8")
    (artifacts / "run1" / "features.json").write_text(json.dumps({"pages": 3}), encoding="utf-8")
    inbox = home / "inbox" / "processed"
    inbox.mkdir(parents=True)
    (inbox / "actions-1.csv").write_bytes(first.read_bytes())
    anna_only = pl.DataFrame({"action_id": ["x-101", "x-102"], "outcome": ["converted", "lost"]})
    anna_only.write_parquet(inbox / "anna.parquet")
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        db.execute("create table tags (value text)")
        db.execute("insert into tags values (?)", (anna_pid,))
    return store, home, artifacts


def test_forget_removes_one_person_everywhere_and_keeps_the_other(filled):
    store, home, artifacts = filled
    anna_pid, bob_pid = pseudonym(ANNA, KEY), pseudonym(BOB, KEY)
    tables = {name: uri for name, (uri, _, _) in store.tables().items() if DeltaTable.is_deltatable(uri)}
    files_before = {name: data_files(uri) for name, uri in tables.items()}
    hers = {p for files in files_before.values() for p in files if _mentions(p, anna_pid)}
    # Old files (not in the current version) that hold none of her rows: a blanket vacuum would remove them.
    unrelated_old = {p for name, uri in tables.items()
                     for p in files_before[name] - {Path(u) for u in DeltaTable(uri).file_uris()}
                     if p not in hers}
    # The grep below can fail: before forgetting, Anna's pseudonym is in the store (her e-mail never is,
    # not even in quarantine: ingest pseudonymises before it validates).
    assert grep(home / "store", [anna_pid]) and not grep(home / "store", [ANNA])

    report = forget(store, ANNA, KEY, home, artifacts)

    # Her rows are gone from every table, Bob's are all there.
    actions = all_rows(store.actions_uri("lead_scoring"))
    assert sorted(actions["action_id"]) == ["x-201", "x-202"]          # x-203 was deleted before
    assert set(actions["entity_id"]) == {bob_pid}
    assert sorted(all_rows(store.outcomes_uri)["action_id"]) == ["x-201", "x-202"]
    quarantine = all_rows(store.quarantine_uri)
    assert quarantine.height == 2 and all(("x-209" in r or "x-201" in r) and "x-1" not in r for r in quarantine["raw"])
    assert report.rows_removed["actions/lead_scoring"] == 3
    assert report.rows_removed["outcomes"] == 2
    assert report.rows_removed["quarantine"] == 2
    assert report.actions == 3

    # Exactly the files holding her rows left the disk: those the deletes rewrote and the older copies.
    removed = [Path(p) for p in report.data_files_removed + report.older_copies_removed]
    assert report.data_files_removed and report.older_copies_removed
    assert len(removed) == len(set(removed)) and set(removed) == hers
    assert all(not p.exists() for p in removed)
    assert len(unrelated_old) >= 3 and all(p.exists() for p in unrelated_old)
    for uri in tables.values():
        assert {Path(u) for u in DeltaTable(uri).file_uris()} <= data_files(uri)
        assert not any(_mentions(p, anna_pid) for p in data_files(uri))

    # Nothing under the store mentions her: not the data, not the log (statistics, delete predicates).
    quoted_ids = [json.dumps(i) for i in ANNA_IDS] + [f"'{i}'" for i in ANNA_IDS]
    assert grep(home / "store", [ANNA, anna_pid, *quoted_ids]) == []
    assert grep(home / "store", [bob_pid])   # ... while Bob is still there
    assert set(report.log_files_removed) >= {"actions/lead_scoring", "outcomes", "quarantine"}

    # Derived files: hers deleted, a shared export rewritten, others untouched, the database only reported.
    assert sorted(report.derived_files_removed) == sorted(str(p) for p in [
        home / "inbox" / "processed" / "anna.parquet", artifacts / "run1" / "input_example.json",
        home / "reports" / "case.html"])
    assert report.derived_files_rewritten == [str(home / "inbox" / "processed" / "actions-1.csv")]
    shared = pl.read_csv(home / "inbox" / "processed" / "actions-1.csv", infer_schema=False)
    assert sorted(shared["action_id"]) == ["x-201", "x-209"]
    assert (home / "reports" / "unrelated.html").exists() and (artifacts / "run1" / "features.json").exists()
    assert report.needs_attention == [str(home / "mlflow" / "mlflow.db")]
    # unrelated.html holds near misses on purpose (joanna.schmidt@..., her pseudonym followed by a digit).
    assert grep(home, [ANNA, anna_pid], skip=("mlflow.db", "unrelated.html")) == []
    assert all(ANNA not in line for line in report.lines())

    # The store still works: readers see Bob, and a new ingest appends after the purged history.
    assert store.scan_actions("lead_scoring").collect().height == 2
    more = _csv(home.parent / "actions-4.csv", [lead_action("x-301", entity_id="carla@kunde.de")])
    assert ingest_paths([more], store, SimulatedClock(datetime(2026, 2, 2, tzinfo=UTC)), KEY).actions_stored == 1
    assert store.scan_actions("lead_scoring").collect().height == 3
    # ... and maintenance works on the purged history: compaction, then a vacuum of everything old.
    compact(store)
    vacuum(store, retention_hours=0)
    for uri in tables.values():
        assert data_files(uri) == {Path(u) for u in DeltaTable(uri).file_uris()}
    assert sorted(store.scan_actions("lead_scoring").collect()["action_id"]) == ["x-201", "x-202", "x-301"]


def test_forget_by_pseudonym_and_twice(filled):
    store, home, artifacts = filled
    anna_pid = pseudonym(ANNA, KEY)
    first = forget(store, anna_pid, KEY, home, artifacts)
    assert first.pseudonym == anna_pid and first.rows_removed["actions/lead_scoring"] == 3
    # Quarantine keeps pseudonyms too, so the pseudonym alone reaches every row of hers, rejected ones included.
    raws = all_rows(store.quarantine_uri)["raw"].to_list()
    assert raws and not [r for r in raws if anna_pid in r or ANNA in r or "x-1" in r]
    again = forget(store, anna_pid, KEY, home, artifacts)
    assert again.total_rows == 0 and again.data_files_removed == [] and again.derived_files_removed == []
    assert "0 rows" in again.lines()[0]


def test_matcher_matches_whole_tokens_only():
    m = Matcher(["bob@x.de", "lead-0123456789abcdef-17"], ["a1"])
    assert m.in_text("mail bob@x.de.") and m.in_text('{"e":"bob@x.de"}') and m.in_text("bob%40x.de")
    assert not m.in_text("jimbob@x.de") and not m.in_text("bob@x.dex")
    assert m.in_text('{"action_id":"a1"}') and m.in_text("action_id 'a1' conflicts")
    assert not m.in_text("var a1=2; a10") and not m.in_text('"a10"')
    assert m.in_text("id lead-0123456789abcdef-17,") and not m.in_text("lead-0123456789abcdef-170")
    frame = pl.DataFrame({"a": ["x", "a1", "bob@x.de"], "n": [1, 2, 3], "l": [["a1"], ["z"], []]})
    assert m.row_mask(frame).to_list() == [True, True, True]
    assert m.row_mask(frame.select("n")).to_list() == [False, False, False]


# -- the whole loop ------------------------------------------------------------------------------
DEMO = dict(weeks=4, seed=11, leads_per_week=400, emails_per_week=5000, frozen_week=2, lead_drift_week=3,
            reply_drift_week=3)


async def _prefect_texts() -> list[str]:
    """What Prefect keeps about the runs: artifacts (data, description) and flow-run parameters."""
    from prefect.client.orchestration import get_client

    texts = []
    async with get_client() as client:
        offset = 0
        while batch := await client.read_artifacts(limit=200, offset=offset):
            texts += [json.dumps([a.key, a.description, a.data], default=str) for a in batch]
            offset += len(batch)
        runs = await client.read_flow_runs(limit=200)
        texts += [json.dumps([r.name, r.parameters], default=str) for r in runs]
    return texts


@pytest.mark.slow
def test_forget_after_simulated_weeks_leaves_no_trace(loop_home, prefect_harness, specs):
    from features.pseudonymise import pseudonymise
    from flows.demo import DemoConfig, run_demo
    from flows.runtime import Runtime
    from simulator.world import World, WorldConfig

    run_demo(DemoConfig(**DEMO))
    runtime = Runtime.from_env()
    store, key = runtime.store, runtime.settings.pseudonym_key
    model = "reply_acceptance"
    # The things forget has to find: a trained model, drift reports, processed inbox files.
    assert list((loop_home / "mlflow" / "artifacts").rglob("input_example.json"))
    assert list((loop_home / "reports").rglob("*.html"))

    # A customer whose message got an action and an outcome in the first week (in training and drift data).
    world = World(WorldConfig(seed=DEMO["seed"], leads_per_week=DEMO["leads_per_week"],
                              emails_per_week=DEMO["emails_per_week"], lead_source_drift_week=DEMO["lead_drift_week"],
                              reply_template_drift_week=DEMO["reply_drift_week"]), specs)
    people = world.population(model, 0).select("entity_ref")
    people = people.with_columns(pseudonymise(people["entity_ref"], key).alias("entity_id"))
    stored = pl.read_delta(store.actions_uri(model))
    actions = stored.join(people, on="entity_id")
    with_outcome = actions.join(pl.read_delta(store.outcomes_uri).select("action_id"), on="action_id").sort("action_id")
    raw, pid = with_outcome["entity_ref"][0], with_outcome["entity_id"][0]
    action_ids = actions.filter(pl.col("entity_id") == pid)["action_id"].to_list()

    # Before: raw ids are stored nowhere; the pseudonym is in the store (so the grep below can fail).
    prefect_before = asyncio.run(_prefect_texts())
    assert prefect_before and not any(raw in t for t in prefect_before)
    assert grep(loop_home, [raw]) == []
    assert grep(loop_home / "store", [pid]) and grep(loop_home / "store", action_ids)
    assert grep(loop_home / "inbox", [pid])     # the processed inbox files, too

    report = forget(store, raw, key, loop_home, runtime.settings.mlflow_artifact_root)

    assert report.rows_removed[f"actions/{model}"] == len(action_ids) and report.rows_removed["outcomes"] >= 1
    assert report.data_files_removed and all(not Path(p).exists() for p in report.data_files_removed)
    # Nothing under LOOP_HOME mentions the person: Delta data and logs, MLflow DB and artifacts (input
    # examples), Evidently reports, the processed inbox files. Prefect (its DB is outside LOOP_HOME here)
    # holds nothing either.
    assert grep(loop_home, [raw, pid, *action_ids]) == []
    assert not any(n in t for t in asyncio.run(_prefect_texts()) for n in [raw, pid, *action_ids])
    assert report.needs_attention == []
    # Everybody else's data is intact and readable.
    assert pl.read_delta(store.actions_uri(model)).height == stored.height - len(action_ids)
    assert store.scan_actions(model).collect().height == stored.height - len(action_ids)
