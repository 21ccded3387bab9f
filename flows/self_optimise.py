"""The weekly cycle: ingest -> monitor -> retrain when due or drifted -> evaluate -> promote."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from features.clock import iso_week, resolve_as_of
from flows.ingest import ingest_inbox_task
from flows.monitor import monitor_flow
from flows.retrain import retrain_flow
from flows.runtime import Runtime
from models.report import markdown_table


def _run_name() -> str:
    from prefect.runtime import flow_run

    as_of = resolve_as_of(flow_run.parameters.get("as_of"))
    return f"self-optimise-{iso_week(as_of)}"


def retraining_due(last_trained: datetime | None, as_of: datetime, every_weeks: int) -> bool:
    """Due when never trained, or ``every_weeks`` have passed (a few hours of slack for schedule jitter)."""
    return last_trained is None or as_of - last_trained >= timedelta(weeks=every_weeks) - timedelta(hours=6)


@task
def last_trained(model: str) -> datetime | None:
    versions = Runtime.from_env().registry.versions(model)
    stamps = [datetime.fromisoformat(v.tags["as_of"]) for v in versions if v.tags.get("as_of")]
    return max(stamps) if stamps else None


@flow(name="self-optimise", flow_run_name=_run_name)
def self_optimise_flow(as_of: datetime | None = None, inbox: str | None = None, models: list[str] | None = None) -> dict:
    as_of = resolve_as_of(as_of)
    runtime = Runtime.from_env()
    week = iso_week(as_of)
    ingested = ingest_inbox_task(inbox, as_of)
    results = {"week": week, "ingest": ingested.as_dict(), "models": {}}
    rows = []
    for model in models or list(runtime.specs):
        drift = monitor_flow(model, as_of)
        due = retraining_due(last_trained(model), as_of, runtime.spec(model).training.retrain_every_weeks)
        reason = "drift" if drift["drift_detected"] else ("schedule" if due else None)
        retrain = retrain_flow(model, as_of) if reason else {"status": "not_due"}
        results["models"][model] = {"drift": drift, "retrain": retrain, "retrain_reason": reason}
        rows.append({"model": model, "drift": drift.get("drift_detected"), "drifted": drift.get("drifted_columns", ""),
                     "retrained": reason or "no", "version": retrain.get("version"), "decision": retrain.get("event", retrain["status"])})
    create_markdown_artifact(
        markdown=f"# Self-optimising cycle {week}\n\nIngested: {ingested.as_dict()}\n\n{markdown_table(rows)}",
        key="self-optimise-summary", description=f"weekly cycle {week}")
    return results
