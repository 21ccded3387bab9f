"""`loop doctor`: check that the registry, the audit table, the week ledger and the store agree.

Each finding says what is wrong and whether it was repaired. Repairs are the safe ones only:
recording what happened (a champion moved by hand becomes an audited manual promotion),
cleaning up after crashes (incomplete ingests, weeks started but never finished). Nothing that
decides for a person (a pending approval, a layout migration) is done automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from features.store import EventStore, StoreError
from features.weeks import WEEK_SCHEMA, finish_week
from models.promotion import AuditTrail
from models.registry import CHALLENGER, CHAMPION, Registry

ALIAS_EVENTS = ("promoted", "approved", "rolled_back", "manual_promotion")
STALE_WEEK = timedelta(hours=12)


@dataclass(frozen=True)
class Finding:
    area: str
    problem: str
    repaired: bool

    def line(self) -> str:
        return f"[{'repaired' if self.repaired else 'needs a person'}] {self.area}: {self.problem}"


def _last_alias_event(store: EventStore, model: str) -> dict | None:
    events = (store.scan_audit().filter((pl.col("model") == model) & pl.col("event").is_in(list(ALIAS_EVENTS)))
              .sort("at", "recorded_at", nulls_last=False).collect())
    return events.row(-1, named=True) if events.height else None


def check(store: EventStore, registry: Registry, now: datetime, repair: bool) -> list[Finding]:
    findings: list[Finding] = []
    try:
        store.check_version()
    except StoreError as exc:
        return [Finding("store", str(exc), False)]

    broken = (store.scan_ledger().group_by("ingest_id").agg(pl.col("status").alias("statuses")).collect()
              .filter(pl.col("statuses").list.contains("started") & ~pl.col("statuses").list.contains("complete")
                      & ~pl.col("statuses").list.contains("abandoned")))
    if broken.height:
        if repair:
            with store.writer():  # taking the writer lock removes rows of ingests that never completed
                pass
        findings.append(Finding("store", f"{broken.height} ingest(s) started and never completed (a crash); "
                                         "their rows are invisible" + ("; removed" if repair else ""), repair))

    audit = AuditTrail(store, registry, now)
    for model in store.specs:
        champion = registry.version_by_alias(model, CHAMPION)
        last = _last_alias_event(store, model)
        audited = last["version"] if last else None
        if champion is not None and str(champion.version) != audited:
            problem = (f"champion alias is on version {champion.version}, the audit table last set it to "
                       f"{audited or 'nothing'}: it was moved outside the loop (e.g. by hand in the MLflow UI)")
            if repair:
                if audited:
                    registry.tag_version(model, str(champion.version), {"previous_champion": audited})
                audit.record(model, str(champion.version), "manual_promotion",
                             [f"champion alias found on version {champion.version} by loop doctor; previously {audited}"],
                             actor="outside the loop")
            findings.append(Finding(f"registry/{model}", problem, repair))
        elif champion is None and last and last["event"] != "rolled_back":
            findings.append(Finding(f"registry/{model}", f"the audit table says version {audited} is champion, "
                                    "but no version has the champion alias (removed by hand?)", False))
        challenger = registry.version_by_alias(model, CHALLENGER)
        if challenger is not None:
            waiting = (store.scan_audit().filter((pl.col("model") == model) & (pl.col("version") == str(challenger.version)))
                       .sort("at", "recorded_at", nulls_last=False).collect())
            if not waiting.height or waiting["event"][-1] != "awaiting_approval":
                findings.append(Finding(f"registry/{model}", f"version {challenger.version} has the challenger alias "
                                        "but no pending approval in the audit table", False))

    weeks = store._scan(f"{store.uri}/weeks", WEEK_SCHEMA).sort("seq").group_by("model", "week").agg(
        pl.col("status").last(), pl.col("at").last()).collect()
    stale = weeks.filter((pl.col("status") == "started") & (pl.col("at") < pl.lit(now - STALE_WEEK).cast(pl.Datetime("us", "UTC"))))
    for row in stale.iter_rows(named=True):
        if repair:
            finish_week(store, row["model"], row["week"], "failed", now, "marked failed by loop doctor: never finished")
        findings.append(Finding(f"weeks/{row['model']}", f"cycle of {row['week']} started and never finished"
                                + ("; marked failed so the next run retries it" if repair else ""), repair))
    return findings
