"""Monitor one model: Evidently drift of features, score and outcome rate against the champion's training window."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.windows import drift_windows
from flows.alerts import emit
from flows.runtime import Runtime
from models.drift import detect_drift
from models.policy import Policy
from models.registry import CHAMPION
from models.report import drift_summary


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    as_of = resolve_as_of(params.get("as_of"))
    return f"monitor-{params['model']}-{iso_week(as_of)}"


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def check_drift(model: str, as_of: datetime) -> dict:
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    week = iso_week(as_of)
    version = runtime.registry.version_by_alias(model, CHAMPION)
    if version is None:
        return {"status": "no_champion", "reason": "no champion yet: nothing to compare against", "drift_detected": False}
    reference_end = datetime.fromisoformat(version.tags["as_of"])
    reference, current = drift_windows(runtime.store, spec, as_of, reference_end)
    if reference.is_empty() or current.is_empty():
        return {"status": "no_data", "reason": f"reference rows {reference.height}, current rows {current.height}",
                "drift_detected": False}
    # Both windows scored by the same champion, so a model change cannot look like drift.
    policy = Policy(spec, runtime.registry.load(model, CHAMPION))
    reference = reference.with_columns(score=policy.scores(reference))
    current = current.with_columns(score=policy.scores(current))
    html = runtime.settings.reports_dir / model / f"drift-{week}.html"
    result = detect_drift(reference, current, spec, html_path=html)
    summary = result.summary()
    automation_rate = float((current.get_column("decision") == spec.positive_decision).mean())
    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float, bool))}
    metrics["automation_rate"] = automation_rate
    run_id = runtime.registry.log_monitoring(model, week, metrics,
                                             {"champion_version": version.version, "reference_end": reference_end.isoformat(),
                                              "drifted_columns": summary["drifted_columns"] or "none"},
                                             [html], run_name=f"monitor-{model}-{week}")
    return {"status": "checked", **summary, "champion_version": version.version, "run_id": run_id,
            "automation_rate": automation_rate, "report": str(html)}


@flow(name="monitor", flow_run_name=_run_name)
def monitor_flow(model: str, as_of: datetime | None = None) -> dict:
    """Compare the last week with the champion's training window; the result feeds the decision to retrain."""
    as_of = resolve_as_of(as_of)
    drift = check_drift(model, as_of)
    if drift["drift_detected"]:
        emit("loop.drift.detected", model, {k: drift.get(k) for k in ("drifted_columns", "score_drifted",
                                                                     "outcome_rate_drifted", "run_id")})
    create_markdown_artifact(markdown=drift_summary(model, iso_week(as_of), drift), key=f"{model.replace('_', '-')}-drift",
                             description=f"{model}: {'drift' if drift['drift_detected'] else 'no drift'}")
    return drift
