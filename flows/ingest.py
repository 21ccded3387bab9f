"""Ingest flows: files given on the command line, or whatever waits in the inbox."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from features.clock import Clock, SimulatedClock, SystemClock
from features.ingest import IngestReport, ingest_inbox, ingest_paths
from flows.runtime import Runtime


def _clock(as_of: datetime | None) -> Clock:
    return SimulatedClock(as_of) if as_of else SystemClock()


@task(retries=2, retry_delay_seconds=[2, 10])
def ingest_files_task(paths: list[str], as_of: datetime | None) -> IngestReport:
    runtime = Runtime.from_env()
    return ingest_paths([Path(p) for p in paths], runtime.store, _clock(as_of), runtime.settings.pseudonym_key)


@task(retries=2, retry_delay_seconds=[2, 10])
def ingest_inbox_task(inbox: str | None, as_of: datetime | None) -> IngestReport:
    runtime = Runtime.from_env()
    folder = Path(inbox) if inbox else runtime.settings.inbox
    return ingest_inbox(folder, runtime.store, _clock(as_of), runtime.settings.pseudonym_key)


def _publish(report: IngestReport, key: str) -> None:
    create_table_artifact(table=[report.as_dict()], key=key, description="rows read, stored, duplicates, quarantined")


@flow(name="ingest")
def ingest_flow(paths: list[str], as_of: datetime | None = None) -> dict:
    report = ingest_files_task(paths, as_of)
    _publish(report, "ingest-counts")
    return report.as_dict()


@flow(name="ingest-inbox")
def ingest_inbox_flow(inbox: str | None = None, as_of: datetime | None = None) -> dict:
    report = ingest_inbox_task(inbox, as_of)
    _publish(report, "ingest-inbox-counts")
    return report.as_dict()
