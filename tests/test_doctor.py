"""loop doctor on a real MLflow registry and Delta store: drift between them is found and safely repaired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from features.weeks import claim_week
from flows.runtime import Runtime
from models.doctor import check
from models.promotion import AuditTrail, rollback

NOW = datetime(2026, 3, 2, 8, tzinfo=UTC)
MODEL = "lead_scoring"


def test_doctor_finds_and_repairs_what_drifted_apart(loop_home):
    runtime = Runtime.from_env()
    store, registry = runtime.store, runtime.registry
    with store.writer():      # an empty store with its ledger
        pass
    registry.client.create_registered_model(MODEL)
    for _ in range(2):
        registry.client.create_model_version(MODEL, source=(loop_home / "model").as_uri())
    audit = AuditTrail(store, registry, NOW)
    registry.set_alias(MODEL, "champion", "1")
    audit.record(MODEL, "1", "promoted", ["gates passed"])
    assert check(store, registry, NOW, repair=False) == []

    # A person moves the champion alias by hand in the MLflow UI; an ingest crashes; a weekly cycle dies.
    registry.set_alias(MODEL, "champion", "2")
    claim_week(store, MODEL, "2026-W09", NOW - timedelta(days=1))
    store.record_ingest("crashed", "started", NOW, "inbox/x.csv", {})   # last: any writer would clean it up

    found = check(store, registry, NOW, repair=False)
    assert sorted(f.area for f in found) == ["registry/lead_scoring", "store", "weeks/lead_scoring"]
    assert not any(f.repaired for f in found)
    assert "moved outside the loop" in next(f.problem for f in found if f.area.startswith("registry"))

    repaired = check(store, registry, NOW, repair=True)
    assert all(f.repaired for f in repaired) and len(repaired) == 3
    assert check(store, registry, NOW, repair=False) == []
    manual = store.scan_audit().filter(pl.col("event") == "manual_promotion").collect()
    assert manual["version"].to_list() == ["2"] and manual["actor"].to_list() == ["outside the loop"]
    # The hand-made champion stays (it is not overwritten), and a rollback knows where to go back to.
    assert str(registry.version_by_alias(MODEL, "champion").version) == "2"
    assert rollback(MODEL, "tester", "undo the manual move", registry, audit) == "1"
    # The week that died may run again.
    assert claim_week(store, MODEL, "2026-W09", NOW) == (True, "failed")


def test_a_challenger_nobody_is_asked_about_needs_a_person(loop_home):
    runtime = Runtime.from_env()
    store, registry = runtime.store, runtime.registry
    with store.writer():
        pass
    registry.client.create_registered_model(MODEL)
    registry.client.create_model_version(MODEL, source=(loop_home / "model").as_uri())
    registry.set_alias(MODEL, "challenger", "1")
    found = check(store, registry, NOW, repair=True)
    assert [(f.area, f.repaired) for f in found] == [("registry/lead_scoring", False)]
    assert "no pending approval" in found[0].problem
