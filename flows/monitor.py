"""Monitor one model: the guard after promotion (models/guard.py), drift per weekly window against the
champion's training window, the k-of-n retraining trigger and the shift the loop caused itself
(models/trigger.py), and the pattern report with safe mode (models/patterns.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.kpis import KPIS, new_points, weekly_kpis
from features.windows import drift_windows
from flows.alerts import emit
from flows.runtime import Runtime
from flows.triggers import RETRAINING_TRIGGERED
from models.dashboard import MonitoringWorkspace, project_url, snapshot_url
from models.guard import run_guard
from models.patterns import run_patterns
from models.policy import Policy
from models.registry import CHAMPION, training_as_of
from models.report import drift_summary, guard_summary, mlflow_run_url, patterns_summary
from models.trigger import WEEK, evaluate_trigger


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    as_of = resolve_as_of(params.get("as_of"))
    return f"monitor-{params['model']}-{iso_week(as_of)}"


def _last_trained(runtime: Runtime, model: str) -> datetime | None:
    """When the newest registered version (champion or not) was trained: a retraining, promoted or not, answers a trigger."""
    stamps = [s for s in map(training_as_of, runtime.registry.versions(model)) if s is not None]
    return max(stamps) if stamps else None


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def check_drift(model: str, as_of: datetime) -> dict:
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    week = iso_week(as_of)
    version = runtime.registry.version_by_alias(model, CHAMPION)
    if version is None:
        return {"status": "no_champion", "reason": "no champion yet: nothing to compare against", "drift_detected": False}
    reference_end = training_as_of(version)
    n = spec.drift.trigger_n
    reference, recent = drift_windows(runtime.store, spec, as_of, reference_end, current_days=n * WEEK.days)
    latest_rows = recent.filter(recent.get_column("decided_at") >= as_of - WEEK).height if recent.height else 0
    if reference.is_empty() or latest_rows == 0:
        return {"status": "no_data", "reason": f"reference rows {reference.height}, rows in the last 7 days {latest_rows}",
                "drift_detected": False}
    # Both windows scored by the same champion, so a model change cannot look like drift.
    policy = Policy(spec, runtime.registry.load(model, CHAMPION))
    reference = reference.with_columns(score=policy.scores(reference))
    recent = recent.with_columns(score=policy.scores(recent))
    html = runtime.settings.reports_dir / model / f"drift-{week}.html"
    report = evaluate_trigger(reference, recent, spec, as_of, _last_trained(runtime, model), html_path=html)
    latest = report.latest
    summary = {**latest.drift.summary(), "drift_detected": latest.drifted,  # outside drift, the loop's own shift removed
               "policy_changed": latest.shift.policy_changed, "outcome_rate_self_caused": latest.shift.self_caused,
               "outcome_rate_outside": latest.shift.outside, "outcome_rate_note": latest.shift.note}
    decision, kpi = report.decision, report.kpi
    automation_rate = latest.shift.positive_share_current
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float, bool))}
    metrics |= {"automation_rate": automation_rate, "trigger_drifted_windows": decision.drifted_windows,
                "trigger_fired": decision.triggered, "kpi_dropped": kpi.dropped}
    if kpi.outside_change is not None:
        metrics["kpi_outside_change"] = kpi.outside_change
    run_id = runtime.registry.log_monitoring(model, week, metrics,
                                             {"champion_version": version.version, "reference_end": reference_end.isoformat(),
                                              "drifted_columns": summary["drifted_columns"] or "none",
                                              "trigger": decision.reason[:500]},
                                             [html], run_name=f"monitor-{model}-{week}")
    settings = runtime.settings
    snapshot = MonitoringWorkspace(settings.workspace_dir).add_drift(spec, html.with_suffix(".json"), as_of, week)
    links = {"mlflow_url": mlflow_run_url(settings.mlflow_ui_url, runtime.registry.experiment_id(f"{model}/monitoring"), run_id),
             "report_url": snapshot_url(settings.evidently_ui_url, snapshot.project_id, snapshot.snapshot_id)}
    return {"status": "checked", **summary, **links, "champion_version": version.version, "run_id": run_id,
            "automation_rate": automation_rate, "report": str(html), "as_of": as_of.isoformat(),
            "trigger": dataclasses.asdict(decision), "kpi": dataclasses.asdict(kpi),
            "windows": [w.row() for w in report.windows], "policies": report.policies.to_dicts()}


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def check_guard(model: str, as_of: datetime) -> dict:
    runtime = Runtime.from_env()
    return run_guard(runtime.store, runtime.registry, runtime.spec(model), as_of)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def check_patterns(model: str, as_of: datetime) -> dict:
    runtime = Runtime.from_env()
    return run_patterns(runtime.store, runtime.registry, runtime.spec(model), as_of)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_to_monitoring_run(run_id: str, guard: dict, patterns: dict, guard_text: str, patterns_text: str) -> None:
    """The guard's and the pattern report's figures and texts on the monitor's MLflow run."""
    registry = Runtime.from_env().registry
    figures = {f"guard_{k}": v for k, v in (guard.get("figures") or {}).items() if isinstance(v, (int, float))}
    figures["guard_rolled_back"] = float(guard.get("status") == "rolled_back")
    registry.log_run_metrics(run_id, figures | patterns.get("metrics", {}))
    registry.client.log_text(run_id, guard_text, "reports/guard.md")
    registry.client.log_text(run_id, patterns_text, "reports/patterns.md")


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def record_kpis(model: str, as_of: datetime, recent_weeks: int = 4) -> dict:
    """Weekly KPIs that became final since the last run: to the model's MLflow KPI run and Evidently project."""
    runtime = Runtime.from_env()
    spec, settings = runtime.spec(model), runtime.settings
    complete = runtime.store.complete_ingests()
    kpis = weekly_kpis(runtime.store.scan_actions(model, complete), runtime.store.scan_outcomes(complete), spec, as_of)
    experiment, run_id = runtime.registry.kpi_run(model)
    points = new_points(kpis, runtime.registry.logged_steps(run_id, KPIS))
    runtime.registry.log_points(run_id, points)
    written = MonitoringWorkspace(settings.workspace_dir).add_kpis(spec, kpis)
    project = MonitoringWorkspace.project_id(spec)
    return {"run_id": run_id, "new_points": len(points), "new_snapshots": len(written),
            "mlflow_url": mlflow_run_url(settings.mlflow_ui_url, experiment, run_id),
            "dashboard_url": project_url(settings.evidently_ui_url, str(project)),
            "weeks": kpis.tail(recent_weeks).drop("week_index", "week_end").to_dicts()}


@flow(name="monitor", flow_run_name=_run_name)
def monitor_flow(model: str, as_of: datetime | None = None, emit_trigger: bool = True) -> dict:
    """Compare each of the last n weeks with the champion's training window and decide whether to retrain.

    With ``emit_trigger`` (the daily deployment) a fired trigger emits `loop.retraining.triggered`,
    which the automation from `loop serve` turns into a run of the model's retraining deployment.
    The weekly cycle passes False: it retrains in its own run and must not start a second one.
    """
    as_of = resolve_as_of(as_of)
    week = iso_week(as_of)
    # The guard first: after a rollback, drift and patterns compare with the restored champion's window.
    guard = check_guard(model, as_of)
    if guard["status"] == "rolled_back":
        emit("loop.model.rolled_back", model, {"restored": guard["restored"], "by": "guard", "reason": guard["reason"]})
    elif guard["status"] == "uncovered":
        emit("loop.guard.fell_short", model, {"version": guard["version"], "reason": guard["reason"]})
    drift = {**check_drift(model, as_of), "kpis": record_kpis(model, as_of)}
    patterns = check_patterns(model, as_of)
    if drift["drift_detected"]:
        emit("loop.drift.detected", model, {k: drift.get(k) for k in ("drifted_columns", "score_drifted",
                                                                     "outcome_rate_drifted", "run_id")})
    trigger = drift.get("trigger") or {}
    if trigger.get("triggered") and emit_trigger:
        emit(RETRAINING_TRIGGERED, model, {"reason": trigger["reason"], "as_of": as_of.isoformat(),
                                            "week": week, "run_id": drift.get("run_id")})
    flag = "retraining triggered" if trigger.get("triggered") else ("drift" if drift["drift_detected"] else "no drift")
    key = model.replace("_", "-")
    create_markdown_artifact(markdown=drift_summary(model, week, drift), key=f"{key}-drift", description=f"{model}: {flag}")
    guard_text, patterns_text = guard_summary(model, week, guard), patterns_summary(model, week, patterns)
    create_markdown_artifact(markdown=guard_text, key=f"{key}-guard", description=f"{model}: guard {guard['status']}")
    held = len(patterns.get("held", []))
    create_markdown_artifact(markdown=patterns_text, key=f"{key}-patterns",
                             description=f"{model}: {len(patterns.get('flagged', []))} flagged, {held} in safe mode")
    if drift.get("run_id"):
        log_to_monitoring_run(drift["run_id"], guard, patterns, guard_text, patterns_text)
    return {**drift, "guard": guard, "patterns": patterns}
