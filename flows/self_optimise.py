"""The weekly cycle: ingest -> monitor -> retrain when due or drifted -> evaluate -> promote."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.settings import Settings
from flows.ingest import ingest_inbox_task
from flows.monitor import monitor_flow
from flows.recalibrate import recalibrate_flow
from flows.retrain import retrain_flow, train_challenger
from features.weeks import claim_week, finish_week
from flows.runtime import Runtime, task_runner
from models.registry import training_as_of
from models.report import cycle_summary, kpi_rows, mlflow_run_url


def _run_name() -> str:
    from prefect.runtime import flow_run

    as_of = resolve_as_of(flow_run.parameters.get("as_of"))
    return f"self-optimise-{iso_week(as_of)}"


def retraining_due(last_trained: datetime | None, as_of: datetime, every_weeks: int) -> bool:
    """Due when never trained, or ``every_weeks`` have passed (a few hours of slack for schedule jitter)."""
    return last_trained is None or as_of - last_trained >= timedelta(weeks=every_weeks) - timedelta(hours=6)


@task
def claim(model: str, week: str, as_of: datetime) -> tuple[bool, str | None]:
    return claim_week(Runtime.from_env().store, model, week, as_of)


@task
def finish(model: str, week: str, status: str, as_of: datetime, detail: str = "") -> None:
    finish_week(Runtime.from_env().store, model, week, status, as_of, detail)


@task
def last_trained(model: str) -> datetime | None:
    stamps = [s for s in map(training_as_of, Runtime.from_env().registry.versions(model)) if s is not None]
    return max(stamps) if stamps else None


@task(cache_policy=NO_CACHE)
def training_links(runs: dict[str, str]) -> dict[str, str]:
    """MLflow UI links of this cycle's training runs (model -> run id)."""
    runtime = Runtime.from_env()
    return {model: mlflow_run_url(runtime.settings.mlflow_ui_url, runtime.registry.experiment_id(f"{model}/training"), run)
            for model, run in runs.items()}


@flow(name="self-optimise", flow_run_name=_run_name, task_runner=task_runner(Settings.from_env()))
def self_optimise_flow(as_of: datetime | None = None, inbox: str | None = None, models: list[str] | None = None) -> dict:
    """Ingest, then per model: claim the week, monitor, and retrain when due or drifted (else maybe recalibrate).

    The retrainings' CPU-heavy halves (training set, fit, comparison with the champion) are submitted
    to the task runner together, so with ``LOOP_TASK_RUNNER=dask`` they run side by side on Dask
    workers; each model's registration, gates and audit then run here, as its ``retrain`` sub-flow.
    A model that fails is recorded as failed for the week and the others still finish; the run then
    fails with the first error.
    """
    as_of = resolve_as_of(as_of)
    runtime = Runtime.from_env()
    week = iso_week(as_of)
    ingested = ingest_inbox_task(inbox, as_of)
    results = {"week": week, "ingest": ingested.as_dict(), "models": {}}
    rows = []
    errors: dict[str, Exception] = {}
    planned: dict[str, tuple[dict, str | None]] = {}
    for model in models or list(runtime.specs):
        claimed, found = claim(model, week, as_of)
        if not claimed:  # a second start of the same week (redeploy, backlog): the work is done or under way
            results["models"][model] = {"drift": {}, "retrain": {"status": f"week_already_{found}"}, "retrain_reason": None}
            rows.append({"model": model, "drift": None, "drifted": "", "guard": None, "safe_mode": "", "retrained": "no",
                         "version": None, "decision": f"week already {found}"})
            continue
        try:
            # This cycle retrains itself when the trigger fires: no event, or the automation would start a second run.
            drift = monitor_flow(model, as_of, emit_trigger=False)
            due = retraining_due(last_trained(model), as_of, runtime.spec(model).training.retrain_every_weeks)
        except Exception as exc:  # noqa: BLE001 - any failure: this model's week is failed, the others still run
            errors[model] = _failed(model, week, as_of, exc, rows)
            continue
        triggered = (drift.get("trigger") or {}).get("triggered", False)
        planned[model] = (drift, "trigger" if triggered else ("schedule" if due else None))

    workers = runtime.settings.for_workers()
    training = {model: train_challenger.submit(workers, runtime.specs, model, as_of)
                for model, (_, reason) in planned.items() if reason}
    for model, (drift, reason) in planned.items():
        try:
            if reason:
                training[model].result()  # waits; raises the task's exception if the training failed
                retrain = retrain_flow(model, as_of, challenger=training[model])
            else:
                # Between retrainings a champion whose scores drifted off while it still ranks well is recalibrated.
                retrain = recalibrate_flow(model, as_of)
                reason = "recalibration" if retrain["status"] == "recalibrated" else None
                retrain = retrain if reason else {"status": "not_due", "recalibration": retrain.get("reason")}
        except Exception as exc:  # noqa: BLE001 - as above
            errors[model] = _failed(model, week, as_of, exc, rows)
            continue
        finish(model, week, "awaiting_approval" if retrain.get("event") == "awaiting_approval" else "done", as_of,
               retrain.get("event", retrain["status"]))
        results["models"][model] = {"drift": drift, "retrain": retrain, "retrain_reason": reason}
        rows.append({"model": model, "drift": drift.get("drift_detected"), "drifted": drift.get("drifted_columns", ""),
                     "guard": (drift.get("guard") or {}).get("status"),
                     "safe_mode": ", ".join((drift.get("patterns") or {}).get("held", [])),
                     "retrained": reason or "no", "version": retrain.get("version"), "decision": retrain.get("event", retrain["status"])})
    links = training_links({m: r["retrain"]["run_id"] for m, r in results["models"].items() if r["retrain"].get("run_id")})
    specs = {m: runtime.spec(m) for m in results["models"]}
    create_markdown_artifact(markdown=cycle_summary(week, results["ingest"], rows, results["models"], specs, links),
                             key="self-optimise-summary", description=f"weekly cycle {week}")
    create_table_artifact(table=rows, key="self-optimise-models", description=f"weekly cycle {week}: per model")
    kpis = [{"model": m, **row} for m, r in results["models"].items()
            for row in kpi_rows(specs[m], ((r["drift"] or {}).get("kpis") or {}).get("weeks", []))]
    if kpis:
        create_table_artifact(table=kpis, key="weekly-kpis", description=f"weekly cycle {week}: KPIs of the last weeks")
    if errors:
        raise next(iter(errors.values()))
    return results


def _failed(model: str, week: str, as_of: datetime, exc: Exception, rows: list[dict]) -> Exception:
    """Record a model's week as failed (a later run may retry it) and keep the error for the end of the run."""
    detail = f"{type(exc).__name__}: {exc}"
    finish(model, week, "failed", as_of, detail)
    rows.append({"model": model, "drift": None, "drifted": "", "guard": None, "safe_mode": "", "retrained": "?",
                 "version": None, "decision": f"failed: {detail}"})
    return exc
