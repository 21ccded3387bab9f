"""Monitor one model: drift per weekly window against the champion's training window, the k-of-n
retraining trigger and the shift the loop caused itself (models/trigger.py does the work)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.windows import drift_windows
from flows.alerts import emit
from flows.runtime import Runtime
from flows.triggers import RETRAINING_TRIGGERED
from models.policy import Policy
from models.registry import CHAMPION, training_as_of
from models.report import drift_summary
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
    return {"status": "checked", **summary, "champion_version": version.version, "run_id": run_id,
            "automation_rate": automation_rate, "report": str(html), "as_of": as_of.isoformat(),
            "trigger": dataclasses.asdict(decision), "kpi": dataclasses.asdict(kpi),
            "windows": [w.row() for w in report.windows], "policies": report.policies.to_dicts()}


@flow(name="monitor", flow_run_name=_run_name)
def monitor_flow(model: str, as_of: datetime | None = None, emit_trigger: bool = True) -> dict:
    """Compare each of the last n weeks with the champion's training window and decide whether to retrain.

    With ``emit_trigger`` (the daily deployment) a fired trigger emits `loop.retraining.triggered`,
    which the automation from `loop serve` turns into a run of the model's retraining deployment.
    The weekly cycle passes False: it retrains in its own run and must not start a second one.
    """
    as_of = resolve_as_of(as_of)
    drift = check_drift(model, as_of)
    if drift["drift_detected"]:
        emit("loop.drift.detected", model, {k: drift.get(k) for k in ("drifted_columns", "score_drifted",
                                                                     "outcome_rate_drifted", "run_id")})
    trigger = drift.get("trigger") or {}
    if trigger.get("triggered") and emit_trigger:
        emit(RETRAINING_TRIGGERED, model, {"reason": trigger["reason"], "as_of": as_of.isoformat(),
                                            "week": iso_week(as_of), "run_id": drift.get("run_id")})
    flag = "retraining triggered" if trigger.get("triggered") else ("drift" if drift["drift_detected"] else "no drift")
    create_markdown_artifact(markdown=drift_summary(model, iso_week(as_of), drift), key=f"{model.replace('_', '-')}-drift",
                             description=f"{model}: {flag}")
    return drift
