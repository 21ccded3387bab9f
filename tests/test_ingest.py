"""Ingest into a real Delta store: every bad row is kept with a reason, re-ingesting adds nothing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from features.clock import SimulatedClock
from features.ingest import ingest_inbox, ingest_paths
from features.pseudonymise import PREFIX, pseudonymise
from features.store import EventStore
from features.validate import FileRejected
from tests.helpers import lead_action

NOW = datetime(2026, 2, 1, tzinfo=UTC)
KEY = b"test-key"

# (overrides of a valid lead action, a phrase the reason must contain)
BAD_ROWS = [
    ({"model": "churn"}, "unknown model 'churn'"),
    ({"decided_at": "2026-01-06T10:00:00"}, "has no time zone"),
    ({"decided_at": "yesterday"}, "is not a timestamp"),
    ({"decided_at": "2026-03-01T10:00:00+00:00"}, "is in the future"),
    ({"score": "1.7"}, "score 1.7 is outside [0, 1]"),
    ({"propensity": "-0.1"}, "propensity -0.1 is outside [0, 1]"),
    ({"propensity": "0"}, "propensity 0 says the decision could not have been taken"),
    ({"score": "high"}, "score 'high' is not a number"),
    ({"company_size": "many"}, "company_size 'many' is not a number"),
    ({"requested_demo": "perhaps"}, "requested_demo 'perhaps' is not a boolean"),
    ({"decision": "call_now"}, "decision 'call_now' is not one of"),
    ({"action_id": ""}, "action_id is empty"),
]


@pytest.fixture
def store(tmp_path, specs):
    return EventStore(str(tmp_path / "store"), specs)


def _write_csv(path, rows):
    pl.DataFrame(rows).write_csv(path)
    return path


def test_each_kind_of_bad_row_is_quarantined_with_its_reason_and_none_is_lost(tmp_path, store):
    good = [lead_action(f"ok{i}") for i in range(3)]
    bad = [lead_action(f"bad{i}") | overrides for i, (overrides, _) in enumerate(BAD_ROWS)]
    path = _write_csv(tmp_path / "actions.csv", good + bad)

    report = ingest_paths([path], store, SimulatedClock(NOW), KEY)

    assert report.rows_read == len(good) + len(bad)
    assert report.actions_stored == len(good)
    assert report.quarantined == len(bad)
    quarantined = store.scan_quarantine().sort("row_number").collect()
    # CSV line numbers: header is line 1, the first bad row follows the good ones.
    assert quarantined["row_number"].to_list() == list(range(2 + len(good), 2 + len(good) + len(bad)))
    for (overrides, phrase), row, reason, raw in zip(BAD_ROWS, bad, quarantined["reason"], quarantined["raw"], strict=True):
        assert phrase in reason, (overrides, reason)
        # The row is kept as received, so it can be fixed and replayed; only the identifier is pseudonymised.
        expected = row | {"entity_id": pseudonymise(pl.Series([row["entity_id"]]), KEY)[0]}
        assert {k: (v if v is not None else "") for k, v in json.loads(raw).items()} == expected
    assert set(quarantined["source_file"]) == {str(path)}


def test_missing_column_rejects_every_row_naming_the_column(tmp_path, store):
    rows = [{k: v for k, v in lead_action(f"a{i}").items() if k != "pages_visited"} for i in range(2)]
    report = ingest_paths([_write_csv(tmp_path / "a.csv", rows)], store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 0 and report.quarantined == 2
    reasons = store.scan_quarantine().collect()["reason"].to_list()
    assert all("missing column 'pages_visited'" in r for r in reasons)


def test_backfilled_decisions_without_propensity_are_kept_as_from_an_unknown_policy(tmp_path, store):
    without_column = [{k: v for k, v in lead_action(f"old{i}").items() if k != "propensity"} for i in range(2)]
    blank = [lead_action("blank", propensity="")]
    report = ingest_paths([_write_csv(tmp_path / "old.csv", without_column), _write_csv(tmp_path / "blank.csv", blank)],
                          store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 3 and report.quarantined == 0
    stored = store.scan_actions("lead_scoring").collect()
    assert stored["propensity"].null_count() == 3


def test_ingesting_the_same_files_twice_adds_nothing(tmp_path, store):
    actions = _write_csv(tmp_path / "actions.csv", [lead_action(f"a{i}") for i in range(5)] + [lead_action("b", score="9")])
    outcomes = tmp_path / "outcomes.jsonl"
    pl.DataFrame({"action_id": ["a0", "a1", "a1"], "observed_at": ["2026-01-20T09:00:00Z", "2026-01-21T09:00:00Z",
                                                                    "2026-01-25T09:00:00Z"],
                  "outcome": ["converted", "lost", "converted"], "revenue": [2000.0, None, 1500.0]}).write_ndjson(outcomes)
    first = ingest_paths([actions, outcomes], store, SimulatedClock(NOW), KEY)
    versions = store.versions()
    second = ingest_paths([actions, outcomes], store, SimulatedClock(NOW), KEY)

    assert (first.actions_stored, first.outcomes_stored, first.quarantined) == (5, 3, 1)
    assert (second.actions_stored, second.outcomes_stored) == (0, 0)
    assert second.duplicates == 5 + 3
    assert store.scan_actions("lead_scoring").collect().height == 5
    assert store.scan_outcomes().collect().height == 3
    assert store.scan_quarantine().collect().height == 1
    # Outcome history stays: both outcomes of a1 are kept, and each got its model from its action.
    assert store.scan_outcomes().filter(pl.col("action_id") == "a1").collect()["model"].to_list() == ["lead_scoring"] * 2
    assert store.versions()["quarantine"] == versions["quarantine"]


def test_same_action_id_with_other_content_is_rejected_not_overwritten(tmp_path, store):
    ingest_paths([_write_csv(tmp_path / "one.csv", [lead_action("a1")])], store, SimulatedClock(NOW), KEY)
    report = ingest_paths([_write_csv(tmp_path / "two.csv", [lead_action("a1", score="0.9")])], store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 0 and report.quarantined == 1
    assert "conflicting content" in store.scan_quarantine().collect()["reason"][0]
    assert store.scan_actions("lead_scoring").collect()["score"].to_list() == [0.4]


def test_conflicting_duplicates_within_one_file_are_all_rejected(tmp_path, store):
    path = _write_csv(tmp_path / "dup.csv", [lead_action("a1"), lead_action("a1", score="0.8"), lead_action("a2"), lead_action("a2")])
    report = ingest_paths([path], store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 1 and report.quarantined == 2 and report.duplicates == 1
    assert store.scan_actions("lead_scoring").collect()["action_id"].to_list() == ["a2"]


def test_identifiers_are_pseudonymised_before_they_are_stored(tmp_path, store):
    path = _write_csv(tmp_path / "a.csv", [lead_action("a1", entity_id="anna.schmidt@kunde.de")])
    ingest_paths([path], store, SimulatedClock(NOW), KEY)
    stored = store.scan_actions("lead_scoring").collect()["entity_id"][0]
    assert stored.startswith(PREFIX) and "anna" not in stored
    assert stored == pseudonymise(pl.Series(["anna.schmidt@kunde.de"]), KEY)[0]
    assert stored != pseudonymise(pl.Series(["anna.schmidt@kunde.de"]), b"another key")[0]


def test_parquet_with_naive_timestamps_is_rejected_like_csv(tmp_path, store):
    row = lead_action("p1")
    frame = pl.DataFrame([row]).with_columns(pl.lit(datetime(2026, 1, 6, 10)).alias("decided_at"),
                                             pl.col("score").cast(pl.Float64))
    frame.write_parquet(tmp_path / "naive.parquet")
    aware = frame.with_columns(pl.lit(datetime(2026, 1, 6, 9, tzinfo=UTC)).alias("decided_at"), pl.lit("p2").alias("action_id"))
    aware.write_parquet(tmp_path / "aware.parquet")
    report = ingest_paths([tmp_path], store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 1 and report.quarantined == 1
    assert "has no time zone" in store.scan_quarantine().collect()["reason"][0]


@pytest.mark.parametrize(("name", "content", "phrase"), [
    ("empty.csv", b"", "empty file"),
    ("latin1.csv", "action_id,model\nä,lead_scoring\n".encode("latin-1"), "not UTF-8"),
    ("semicolon.csv", b"action_id;model;decided_at\na1;lead_scoring;2026-01-06T10:00:00Z\n", "delimiter"),
    ("header.csv", b"action_id,model,decided_at\n", "header only"),
    ("unknown.csv", b"foo,bar\n1,2\n", "neither action columns"),
])
def test_unreadable_files_are_reported_and_moved_to_failed_without_stopping_others(tmp_path, store, name, content, phrase):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / name).write_bytes(content)
    _write_csv(inbox / "zz-good.csv", [lead_action("g1")])
    report = ingest_inbox(inbox, store, SimulatedClock(NOW), KEY)
    assert report.actions_stored == 1
    assert len(report.failed_files) == 1 and phrase in report.failed_files[0][1]
    assert (inbox / "failed" / name).exists() and phrase in (inbox / "failed" / f"{name}.reason.txt").read_text()
    assert (inbox / "processed" / "zz-good.csv").exists()


@pytest.mark.parametrize(("content", "problem"), [
    (b"abcdefg\xc3" + b"\xa9hijklmn" + b"opqrstuv", None),              # a character split between chunks
    (b"abcdefgh" + b"ijkl\xa9mno" + b"pqrstuvw", "invalid byte at offset 12"),  # a stray byte after an ASCII chunk
    (b"abcdefg\xc3" + b"hijklmno" + b"pqrstuvw", "invalid byte at offset 8"),  # a character cut off by an ASCII chunk
    (b"abcdefgh" + b"ijklmno\xc3", "truncated character at the end"),
])
def test_the_utf8_check_reads_chunk_by_chunk_and_skips_only_what_cannot_fail(tmp_path, monkeypatch, content, problem):
    """ASCII chunks are not decoded, unless a character began in the chunk before."""
    import features.ingest as ingest

    monkeypatch.setattr(ingest, "_READ_CHUNK", 8)
    path = tmp_path / "chunks.csv"
    path.write_bytes(content)
    if problem is None:
        assert ingest._file_digest_and_check(path, text=True) == hashlib.sha256(content).hexdigest()[:16]
    else:
        with pytest.raises(FileRejected, match=problem):
            ingest._file_digest_and_check(path, text=True)


def test_paired_rows_store_the_action_once_and_every_outcome(tmp_path, store):
    rows = [
        lead_action("p1") | {"observed_at": "2026-01-20T09:00:00+01:00", "outcome": "lost", "revenue": ""},
        lead_action("p1") | {"observed_at": "2026-01-28T09:00:00+01:00", "outcome": "converted", "revenue": "3100"},
        lead_action("p2") | {"observed_at": "", "outcome": "", "revenue": ""},          # no outcome yet
        lead_action("p3") | {"observed_at": "2026-01-05T09:00:00+01:00", "outcome": "lost", "revenue": ""},  # before its action
    ]
    report = ingest_paths([_write_csv(tmp_path / "paired.csv", rows)], store, SimulatedClock(NOW), KEY)
    assert (report.actions_stored, report.outcomes_stored, report.quarantined) == (2, 2, 1)
    assert sorted(store.scan_actions("lead_scoring").collect()["action_id"]) == ["p1", "p2"]
    outcomes = store.scan_outcomes().sort("observed_at").collect()
    assert outcomes["outcome"].to_list() == ["lost", "converted"] and outcomes["revenue"].to_list() == [None, 3100.0]
    assert "observed_at is before decided_at" in store.scan_quarantine().collect()["reason"][0]


def test_one_naive_timestamp_rejects_only_its_own_row_wherever_it_stands(tmp_path, store):
    rows = [lead_action("naive", decided_at="2026-01-06T10:00:00"), lead_action("colon", decided_at="2026-01-06T10:00:00+01:00"),
            lead_action("compact", decided_at="2026-01-06T10:00+0100"), lead_action("zulu", decided_at="2026-01-06 09:00:00Z")]
    report = ingest_paths([_write_csv(tmp_path / "t.csv", rows)], store, SimulatedClock(NOW), KEY)
    assert (report.actions_stored, report.quarantined) == (3, 1)
    stored = store.scan_actions("lead_scoring").collect()
    assert set(stored["decided_at"].dt.to_string("%H:%M")) == {"09:00"}     # every variant is the same instant in UTC


def test_a_rejected_row_is_kept_with_its_pseudonym_not_the_raw_identifier(tmp_path, store):
    path = _write_csv(tmp_path / "a.csv", [lead_action("bad", entity_id="anna.schmidt@kunde.de", score="3")])
    ingest_paths([path], store, SimulatedClock(NOW), KEY)
    raw = json.loads(store.scan_quarantine().collect()["raw"][0])
    assert raw["entity_id"] == pseudonymise(pl.Series(["anna.schmidt@kunde.de"]), KEY)[0]
    stored_bytes = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"anna.schmidt" not in stored_bytes


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_repeats_across_batches_and_against_the_store_are_told_apart(tmp_path, store, monkeypatch, suffix):
    import features.ingest

    ingest_paths([_write_csv(tmp_path / "first.csv", [lead_action("s1"), lead_action("s2")])], store, SimulatedClock(NOW), KEY)
    monkeypatch.setattr(features.ingest, "BATCH_ROWS", 3)      # several batches from a small file
    rows = [lead_action(f"a{i}") for i in range(1, 6)] + [
        lead_action("a2"),                  # same as in an earlier batch: a duplicate
        lead_action("a3", score="0.9"),     # differs from an earlier batch: a conflict
        lead_action("s1"),                  # same as stored: a duplicate
        lead_action("s2", score="0.8"),     # differs from stored: a conflict
    ]
    frame = pl.DataFrame(rows)
    path = tmp_path / f"second.{suffix}"
    frame.write_csv(path) if suffix == "csv" else frame.write_parquet(path)
    report = ingest_paths([path], store, SimulatedClock(NOW), KEY)
    assert (report.actions_stored, report.duplicates, report.quarantined) == (5, 2, 2)
    reasons = store.scan_quarantine().collect()["reason"].to_list()
    assert sorted(r.split("'")[1] for r in reasons) == ["a3", "s2"] and all("conflicting content" in r for r in reasons)
    stored = store.scan_actions("lead_scoring").collect()
    assert stored.height == stored["action_id"].n_unique() == 7
    assert stored.filter(pl.col("action_id") == "a3")["score"].to_list() == [0.4]


def test_rows_that_only_share_a_hash_with_stored_rows_are_told_apart_by_their_real_keys(tmp_path, store, monkeypatch):
    """Every action id and every outcome key hashed alike: each row is a candidate, none may be lost."""
    import features.ingest
    import features.store

    def same(expr: pl.Expr) -> pl.Expr:
        return pl.lit(42, pl.Int64)

    key_hash = features.store.outcome_key_hash
    monkeypatch.setattr(features.store, "action_id_hash", same)
    monkeypatch.setattr(features.ingest, "action_id_hash", same)
    monkeypatch.setattr(features.store, "outcome_key_hash", lambda seed=0: pl.lit(7, pl.Int64) if seed == 0 else key_hash(seed))
    monkeypatch.setattr(features.ingest, "BATCH_ROWS", 3)
    seen = {"observed_at": "2026-01-20T09:00:00+00:00", "outcome": "lost", "revenue": ""}
    ingest_paths([_write_csv(tmp_path / "first.csv", [lead_action("s1") | seen, lead_action("s2") | seen])], store,
                 SimulatedClock(NOW), KEY)
    rows = [lead_action(f"a{i}") | seen for i in range(1, 5)] + [
        lead_action("a2") | seen,                                            # repeats an earlier batch
        lead_action("a3", score="0.9") | seen,                               # conflicts with an earlier batch
        lead_action("s1") | seen,                                            # repeats a stored row
        lead_action("s2", score="0.8") | seen | {"outcome": "converted"},    # conflicts; its outcome is new
    ]
    report = ingest_paths([_write_csv(tmp_path / "second.csv", rows)], store, SimulatedClock(NOW), KEY)

    assert (report.actions_stored, report.outcomes_stored, report.quarantined) == (4, 5, 2)
    assert report.duplicates == 2 + 3          # a2 and s1, and the outcomes of a2, a3 and s1
    assert sorted(r.split("'")[1] for r in store.scan_quarantine().collect()["reason"]) == ["a3", "s2"]
    actions = pl.scan_delta(str(tmp_path / "store" / "actions" / "lead_scoring")).collect()
    assert sorted(actions["action_id"]) == ["a1", "a2", "a3", "a4", "s1", "s2"] and actions["id_hash"].unique().to_list() == [42]
    outcomes = store.scan_outcomes().sort("action_id", "outcome").collect()
    assert outcomes.select("action_id", "outcome").rows() == [
        ("a1", "lost"), ("a2", "lost"), ("a3", "lost"), ("a4", "lost"), ("s1", "lost"), ("s2", "converted"), ("s2", "lost")]


def test_actions_of_two_models_and_outcomes_in_several_batches_are_stored_without_hanging(tmp_path, store):
    """Three tables written at once, in several batches each (as the scoring service's log flush does):
    with the writes fed to delta-rs as streams, all of its runtime threads waited for the next batch
    and the ingest hung on a 2-core machine."""
    import threading

    from features.ingest import ingest_batches

    replies = pl.DataFrame([{**lead_action(f"r{i}"), "model": "reply_acceptance", "decision": "auto_send",
                             "intent": "return", "language": "de", "customer_tier": "standard",
                             "template_id": "ret_v1", "message_length": "120", "has_attachment": "false"}
                            for i in range(6)]).drop("source", "industry", "region", "company_size", "pages_visited",
                                                     "email_opens", "requested_demo")
    leads = pl.DataFrame([lead_action(f"l{i}") for i in range(6)])
    outcomes = pl.DataFrame({"action_id": ["l0", "r0", "l1"], "observed_at": "2026-01-20T09:00:00+00:00",
                             "outcome": ["converted", "accepted", "lost"], "revenue": ["100", "", ""]})
    batches = [(leads.slice(0, 3), 1), (replies.slice(0, 3), 4), (leads.slice(3), 7), (replies.slice(3), 10),
               (outcomes, 13)]
    reports = []
    with store.writer():
        worker = threading.Thread(target=lambda: reports.append(
            ingest_batches(batches, "three-tables", "digest", store, SimulatedClock(NOW), KEY)), daemon=True)
        worker.start()
        worker.join(timeout=120)
    assert not worker.is_alive(), "the ingest hung"
    assert (reports[0].actions_stored, reports[0].outcomes_stored, reports[0].quarantined) == (12, 3, 0)
    assert store.scan_actions("reply_acceptance").collect().height == 6


def test_a_conflict_with_the_store_is_quarantined_with_its_line_and_the_row_as_received(tmp_path, store):
    ingest_paths([_write_csv(tmp_path / "one.csv", [lead_action("a1")])], store, SimulatedClock(NOW), KEY)
    second = [lead_action("b1"), lead_action("a1", score="0.9")]
    ingest_paths([_write_csv(tmp_path / "two.csv", second)], store, SimulatedClock(NOW), KEY)
    row = store.scan_quarantine().collect().row(0, named=True)
    assert row["row_number"] == 3                     # header is line 1, b1 line 2, the conflicting a1 line 3
    assert json.loads(row["raw"])["score"] == "0.9" and set(json.loads(row["raw"])) == set(second[1])
