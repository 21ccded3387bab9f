"""Late and orphan outcomes, as-of rebuilds with a digest check, schema evolution, migration, replay."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from features.clock import SimulatedClock
from features.ingest import ingest_paths, replay_quarantine
from features.migrate import migrate
from features.spec import Feature
from features.store import SCHEMA_VERSION, EventStore, StoreError
from features.windows import labelled_frame, rebuild_training_set, training_lineage
from tests.helpers import lead_action

T1 = datetime(2026, 2, 2, 2, tzinfo=UTC)
KEY = b"test-key"


def _csv(path, rows):
    pl.DataFrame(rows).write_csv(path)
    return path


def _outcomes(path, rows):
    pl.DataFrame(rows, schema=["action_id", "observed_at", "outcome", "revenue"], orient="row").write_ndjson(path)
    return path


def test_an_outcome_before_its_action_waits_and_joins_when_the_action_arrives(tmp_path, specs):
    store = EventStore(str(tmp_path / "store"), specs)
    spec = specs["lead_scoring"]
    ingest_paths([_outcomes(tmp_path / "o.jsonl", [("early", "2026-01-20T09:00:00Z", "converted", 1000.0)])],
                 store, SimulatedClock(T1), KEY)
    assert labelled_frame(store, spec, T1).is_empty()
    assert store.scan_outcomes().collect()["model"].to_list() == [None]          # kept, pending its action
    ingest_paths([_csv(tmp_path / "a.csv", [lead_action("early")])], store, SimulatedClock(T1), KEY)
    labelled = labelled_frame(store, spec, T1)
    assert labelled["action_id"].to_list() == ["early"] and labelled["label"].to_list() == [1]


def test_a_training_set_is_rebuilt_from_current_tables_and_checked_against_its_digest(tmp_path, specs):
    store = EventStore(str(tmp_path / "store"), specs)
    spec = specs["lead_scoring"]
    ingest_paths([_csv(tmp_path / "a.csv", [lead_action(f"a{i}") for i in range(6)])], store, SimulatedClock(T1), KEY)
    ingest_paths([_outcomes(tmp_path / "o1.jsonl", [("a0", "2026-01-20T09:00:00Z", "converted", 900.0),
                                                   ("a1", "2026-01-21T09:00:00Z", "lost", None)])],
                 store, SimulatedClock(T1), KEY)
    original = labelled_frame(store, spec, T1)
    lineage = training_lineage(store, spec, original, T1)
    assert original["action_id"].to_list() == ["a0", "a1"]

    # Later: outcomes observed before T1 but received after it, a correction, and new actions.
    later = SimulatedClock(T1 + timedelta(days=3))
    ingest_paths([_outcomes(tmp_path / "o2.jsonl", [("a2", "2026-01-22T09:00:00Z", "lost", None),
                                                   ("a1", "2026-01-25T09:00:00Z", "converted", 500.0)])],
                 store, later, KEY)
    ingest_paths([_csv(tmp_path / "b.csv", [lead_action("b1", decided_at="2026-02-03T10:00:00+00:00")])], store, later, KEY)
    assert labelled_frame(store, spec, T1 + timedelta(days=3)).height > original.height

    check = rebuild_training_set(store, spec, lineage)
    assert check.matches, check.explain()
    assert check.frame.select("action_id", "label").equals(original.select("action_id", "label"))

    # Erasure wins over reproducibility, and the digest check says so.
    from deltalake import DeltaTable

    DeltaTable(store.actions_uri("lead_scoring")).delete("action_id = 'a0'")
    erased = rebuild_training_set(store, spec, lineage)
    assert not erased.matches and "erased" in erased.explain()
    assert erased.frame["action_id"].to_list() == ["a1"]


def test_a_spec_may_gain_an_optional_column_and_drop_one(tmp_path, specs):
    uri = str(tmp_path / "store")
    spec = specs["lead_scoring"]
    ingest_paths([_csv(tmp_path / "old.csv", [lead_action("old")])], EventStore(uri, specs), SimulatedClock(T1), KEY)

    grown = dataclasses.replace(spec, features=(*[f for f in spec.features if f.name != "email_opens"],
                                                Feature("budget_eur", "numeric")))
    store = EventStore(uri, {**specs, "lead_scoring": grown})
    row = {k: v for k, v in lead_action("new").items() if k != "email_opens"} | {"budget_eur": "25000"}
    report = ingest_paths([_csv(tmp_path / "new.csv", [row])], store, SimulatedClock(T1), KEY)
    assert report.actions_stored == 1 and report.clean

    rows = store.scan_actions("lead_scoring").sort("action_id").collect()
    assert rows["action_id"].to_list() == ["new", "old"]
    assert rows["budget_eur"].to_list() == [25000.0, None]       # old rows read the new column as null
    assert rows["email_opens"].to_list() == [None, 3.0]          # the dropped column stays in history


def test_a_column_whose_type_changes_is_refused_with_a_clear_error(tmp_path, specs):
    uri = str(tmp_path / "store")
    spec = specs["lead_scoring"]
    ingest_paths([_csv(tmp_path / "old.csv", [lead_action("old")])], EventStore(uri, specs), SimulatedClock(T1), KEY)
    retyped = dataclasses.replace(spec, features=tuple(
        Feature(f.name, "categorical") if f.name == "company_size" else f for f in spec.features))
    store = EventStore(uri, {**specs, "lead_scoring": retyped})
    report = ingest_paths([_csv(tmp_path / "new.csv", [lead_action("new", company_size="large")])], store,
                          SimulatedClock(T1), KEY)
    assert report.actions_stored == 0 and len(report.failed_files) == 1
    assert "company_size" in report.failed_files[0][1] and "type change is refused" in report.failed_files[0][1]
    assert store.scan_actions("lead_scoring").collect()["action_id"].to_list() == ["old"]


def test_migrate_upgrades_a_store_written_by_the_first_release(tmp_path, specs):
    uri = tmp_path / "store"
    # Release 1 wrote rows with an ingest id but kept no ledger and no layout file.
    ingest_paths([_csv(tmp_path / "a.csv", [lead_action("a1"), lead_action("a2")])], EventStore(str(uri), specs),
                 SimulatedClock(T1), KEY)
    import shutil

    shutil.rmtree(uri / "ingests")
    store = EventStore(str(uri), specs)
    assert store.schema_version() == 1
    with pytest.raises(StoreError, match="loop migrate"):
        store.scan_actions("lead_scoring").collect()

    done = migrate(store, T1)
    assert "layout 1 -> 2" in done[0] and "layout 2 -> 3" in done[1]
    assert store.schema_version() == SCHEMA_VERSION
    assert sorted(store.scan_actions("lead_scoring").collect()["action_id"]) == ["a1", "a2"]
    assert migrate(store, T1) == [f"already at layout {SCHEMA_VERSION}"]


def _as_layout_2(uri, specs) -> EventStore:
    """The store as a layout-2 release left it: the same rows, no hash columns."""
    from deltalake import write_deltalake

    for table, hashes in ((uri / "actions" / "lead_scoring", ["id_hash", "content_hash"]),
                          (uri / "outcomes", ["key_hash", "key_check"])):
        if not table.exists():
            continue
        rows = pl.read_delta(str(table)).drop(hashes)
        write_deltalake(str(table), rows.to_arrow(), mode="overwrite", schema_mode="overwrite")
    store = EventStore(str(uri), specs)
    store._mark_version(2)
    return store


def test_migrate_gives_rows_stored_before_their_hashes_so_repeats_and_conflicts_are_still_found(tmp_path, specs):
    uri = tmp_path / "store"
    seen = {"observed_at": "2026-01-20T09:00:00+00:00", "outcome": "lost", "revenue": ""}
    first = [lead_action("a1") | seen, lead_action("a2") | seen, lead_action("a3") | seen]
    ingest_paths([_csv(tmp_path / "first.csv", first)], EventStore(str(uri), specs), SimulatedClock(T1), KEY)
    store = _as_layout_2(uri, specs)
    assert "id_hash" not in pl.scan_delta(str(uri / "actions" / "lead_scoring")).collect_schema().names()
    with pytest.raises(StoreError, match="loop migrate"):
        store.scan_actions("lead_scoring").collect()

    expected = "layout 2 -> 3: added key hashes to the rows stored before (actions/lead_scoring 3, outcomes 3)"
    assert migrate(store, T1) == [expected]
    assert migrate(store, T1) == [f"already at layout {SCHEMA_VERSION}"]
    stored = pl.scan_delta(str(uri / "actions" / "lead_scoring")).collect()
    assert stored["id_hash"].null_count() == stored["content_hash"].null_count() == 0
    assert "id_hash" not in store.scan_actions("lead_scoring").collect().columns     # readers do not see them

    later = [lead_action("a1") | seen,                                                      # repeat: duplicate
             lead_action("a2", score="0.9") | seen,                                         # conflict
             lead_action("a3") | seen | {"observed_at": "2026-01-25T09:00:00+00:00", "outcome": "converted"},
             lead_action("b1")]
    report = ingest_paths([_csv(tmp_path / "later.csv", later)], store, SimulatedClock(T1), KEY)
    assert (report.actions_stored, report.outcomes_stored, report.quarantined) == (1, 1, 1)
    assert report.duplicates == 4           # a1 with its outcome, a2's outcome, a3's action
    assert "conflicting content already stored" in store.scan_quarantine().collect()["reason"][0]
    outcomes = store.scan_outcomes().filter(pl.col("action_id") == "a3").sort("observed_at").collect()
    assert outcomes["outcome"].to_list() == ["lost", "converted"]


def test_migrate_hashes_rows_stored_before_the_spec_gained_a_feature_as_readers_see_them(tmp_path, specs):
    uri = tmp_path / "store"
    ingest_paths([_csv(tmp_path / "old.csv", [lead_action("old")])], EventStore(str(uri), specs), SimulatedClock(T1), KEY)
    spec = specs["lead_scoring"]
    grown = {**specs, "lead_scoring": dataclasses.replace(spec, features=(*spec.features, Feature("budget_eur", "numeric")))}
    store = _as_layout_2(uri, grown)
    migrate(store, T1)
    assert "budget_eur" not in pl.scan_delta(str(uri / "actions" / "lead_scoring")).collect_schema().names()

    # The same action sent again, the new feature blank: the store holds it already.
    report = ingest_paths([_csv(tmp_path / "again.csv", [lead_action("old") | {"budget_eur": ""}])], store,
                          SimulatedClock(T1), KEY)
    assert (report.actions_stored, report.duplicates, report.quarantined) == (0, 1, 0)


def test_replay_stores_quarantined_rows_once_the_spec_is_fixed(tmp_path, specs):
    uri = str(tmp_path / "store")
    strict = dataclasses.replace(specs["lead_scoring"], unknown_categories="reject")
    store = EventStore(uri, {**specs, "lead_scoring": strict})
    path = _csv(tmp_path / "a.csv", [lead_action("ok"), lead_action("webinar", source="webinar"),
                                     lead_action("broken", score="9")])
    ingest_paths([path], store, SimulatedClock(T1), KEY)
    assert store.scan_quarantine().collect().height == 2

    replayed = replay_quarantine(EventStore(uri, specs), SimulatedClock(T1), KEY)   # the spec now accepts new sources
    assert replayed.actions_stored == 1 and replayed.quarantined == 1
    remaining = store.scan_quarantine().collect()
    assert remaining.height == 1 and "score 9 is outside" in remaining["reason"][0]
    assert sorted(store.scan_actions("lead_scoring").collect()["action_id"]) == ["ok", "webinar"]


def test_the_store_location_is_a_uri(tmp_path, specs):
    """file:// goes through the same URI code path that s3:// and other delta-rs stores take."""
    store = EventStore((tmp_path / "store").as_uri(), specs)
    report = ingest_paths([_csv(tmp_path / "a.csv", [lead_action("u1")])], store, SimulatedClock(T1), KEY)
    assert report.actions_stored == 1
    assert store.schema_version() == SCHEMA_VERSION
    assert store.scan_actions("lead_scoring").collect()["action_id"].to_list() == ["u1"]


def test_a_store_from_before_graded_outcomes_reads_share_kept_as_null_and_takes_it_from_then_on(tmp_path, specs):
    uri = str(tmp_path / "store")
    store = EventStore(uri, specs)
    spec = specs["reply_acceptance"]
    reply = {k: v for k, v in lead_action("r1").items() if k not in ("source", "industry", "region", "company_size",
                                                                    "pages_visited", "email_opens", "requested_demo")}
    reply |= {"model": "reply_acceptance", "decision": "human_review", "intent": "return", "language": "de",
              "customer_tier": "standard", "template_id": "ret_v1", "message_length": "300", "has_attachment": "false"}
    ingest_paths([_csv(tmp_path / "a.csv", [reply, reply | {"action_id": "r2"}])], store, SimulatedClock(T1), KEY)
    ingest_paths([_outcomes(tmp_path / "o1.jsonl", [("r1", "2026-01-06T12:00:00Z", "edited", None)])],
                 store, SimulatedClock(T1), KEY)
    # The outcomes table as the release before graded outcomes wrote it: no share_kept column.
    old = pl.read_delta(store.outcomes_uri).drop("share_kept")
    old.write_delta(store.outcomes_uri, mode="overwrite", delta_write_options={"schema_mode": "overwrite"})
    assert "share_kept" not in pl.read_delta(store.outcomes_uri).columns

    assert store.scan_outcomes().collect()["share_kept"].to_list() == [None]
    labelled = labelled_frame(store, spec, T1)
    assert labelled.filter(pl.col("action_id") == "r1")["grade"].to_list() == [spec.outcomes.share_kept_default]

    later = pl.DataFrame({"action_id": ["r2"], "observed_at": ["2026-01-06T13:00:00Z"], "outcome": ["edited"],
                          "share_kept": [0.8]})
    later.write_ndjson(tmp_path / "o2.jsonl")
    assert ingest_paths([tmp_path / "o2.jsonl"], store, SimulatedClock(T1), KEY).outcomes_stored == 1
    rows = store.scan_outcomes().sort("action_id").collect()
    assert rows["share_kept"].to_list() == [None, 0.8]              # old rows null, the new one as given
    grades = labelled_frame(store, spec, T1).sort("action_id")["grade"].to_list()
    assert grades == [spec.outcomes.share_kept_default, 0.8]
