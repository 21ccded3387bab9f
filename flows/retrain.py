"""Retrain one model: mature training set -> fit + calibrate + threshold -> MLflow -> gates -> alias."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.training_set import NotEnoughData, Split, time_split
from features.windows import labelled_frame, recent_actions, training_lineage
from flows.alerts import emit
from flows.approval import request_approval
from flows.runtime import Runtime
from models.evaluation import Comparison, compare_with_champion, comparison_table
from models.plots import calibration_plot, threshold_plot
from models.model_card import model_card
from models.promotion import AuditTrail, apply_decision
from models.registry import CHAMPION
from models.report import retrain_summary
from models.train import TrainedModel, fit_model


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"retrain-{params['model']}-{iso_week(resolve_as_of(params.get('as_of')))}"


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def load_training_set(model: str, as_of: datetime):
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    labelled = labelled_frame(runtime.store, spec, as_of)
    return labelled, training_lineage(runtime.store, spec, labelled, as_of)


@task(cache_policy=NO_CACHE)
def fit(model: str, labelled) -> tuple[Split, TrainedModel] | str:
    """The split and the fitted model, or why there is none yet (a normal state early on, not a failure)."""
    spec = Runtime.from_env().spec(model)
    try:
        split = time_split(labelled, spec)
        return split, fit_model(split, spec)
    except NotEnoughData as exc:
        return str(exc)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_and_register(model: str, split: Split, trained: TrainedModel, lineage: dict, week: str,
                     tags: dict[str, str] | None = None) -> tuple[str, str]:
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    lineage = {**lineage, **split.sizes()}
    with tempfile.TemporaryDirectory(prefix="loop-plots-") as tmp:
        folder = Path(tmp)
        plots = {
            "calibration": calibration_plot(trained.test_labels, trained.test_scores, f"{model}: calibration on test weeks",
                                            folder / "calibration.png"),
            "threshold": threshold_plot(trained.threshold.curve, trained.threshold.threshold,
                                        f"{model}: objective by threshold", folder / "threshold_curve.png"),
        }
        kind = (tags or {}).get("kind", "train")
        run_id, version = runtime.registry.log_training(spec, trained, lineage=lineage, input_example=split.test.head(5),
                                                        week=week, plots=plots, run_name=f"{kind}-{model}-{week}", tags=tags)
    runtime.registry.attach_model_card(model, version, run_id, model_card(spec, trained, split.test, lineage, version))
    return run_id, version


@task(cache_policy=NO_CACHE)
def compare(model: str, split: Split, trained: TrainedModel, version: str, as_of: datetime) -> Comparison:
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    champion_version = runtime.registry.version_by_alias(model, CHAMPION)
    champion = runtime.registry.load(model, CHAMPION) if champion_version else None
    challenger = runtime.registry.load(model, version)
    return compare_with_champion(spec, trained, split, champion, recent_actions(runtime.store, spec, as_of), challenger)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_evidence(comparison: Comparison, run_id: str) -> None:
    """The promotion's figures (OPE values, intervals, coverage, ESS, paired differences) on the training run."""
    if comparison.evidence is not None:
        Runtime.from_env().registry.log_run_metrics(run_id, comparison.evidence.metrics())


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def decide(model: str, comparison: Comparison, version: str, week: str, as_of: datetime) -> str:
    runtime = Runtime.from_env()
    audit = AuditTrail(runtime.store, runtime.registry, as_of)
    return apply_decision(comparison.decision, model, version, runtime.registry, audit, week)


@task(cache_policy=NO_CACHE)
def record_skip(model: str, reason: str, week: str, as_of: datetime) -> None:
    runtime = Runtime.from_env()
    AuditTrail(runtime.store, runtime.registry, as_of).record(model, None, "not_trained", [reason], week=week)


@flow(name="retrain", flow_run_name=_run_name)
def retrain_flow(model: str, as_of: datetime | None = None) -> dict:
    """Train a challenger on mature outcomes, register it, and promote it if the spec's gates pass."""
    as_of = resolve_as_of(as_of)
    week = iso_week(as_of)
    labelled, lineage = load_training_set(model, as_of)
    fitted = fit(model, labelled)
    if isinstance(fitted, str):
        record_skip(model, fitted, week, as_of)
        outcome = {"status": "skipped", "reason": fitted, "model": model, "week": week}
        create_markdown_artifact(markdown=retrain_summary(model, week, outcome), key=f"{model.replace('_', '-')}-retrain")
        return outcome
    split, trained = fitted
    return register_and_promote(model, split, trained, lineage, week, as_of)


def register_and_promote(model: str, split: Split, trained: TrainedModel, lineage: dict, week: str, as_of: datetime,
                         tags: dict[str, str] | None = None) -> dict:
    """Register a challenger, compare it with the champion and apply the gates (inside a flow: retrain, recalibrate)."""
    run_id, version = log_and_register(model, split, trained, lineage, week, tags)
    comparison = compare(model, split, trained, version, as_of)
    log_evidence(comparison, run_id)
    event = decide(model, comparison, version, week, as_of)
    approval_run = None
    if event == "awaiting_approval":
        emit("loop.promotion.awaiting_approval", model, {"version": version, "week": week,
                                                          "reasons": "; ".join(comparison.decision.reasons)})
        # A flow run of its own waits for the person, so this run (and its concurrency slot) ends now.
        approval_run = request_approval(model, version, week)
    outcome = {
        "status": "trained", "model": model, "week": week, "version": version, "run_id": run_id, "event": event,
        "reasons": list(comparison.decision.reasons), "threshold": trained.threshold.threshold,
        "threshold_reason": trained.threshold.reason, "rows": lineage["rows"], "as_of": lineage["as_of"],
        "segment_thresholds": trained.segments.table() if trained.segments and trained.segments.calibration else [],
        "lineage_tags": tags or {},
        "spec_hash": lineage["spec_hash"], "split": split.sizes(), "comparison": comparison_table(comparison),
        "flip_share": comparison.flip_share,
        "differences": comparison.evidence.table() if comparison.evidence else [],
        "policy_values": comparison.evidence.value_table() if comparison.evidence else [],
        "one_sided_alpha": comparison.evidence.one_sided_alpha if comparison.evidence else None,
        "test_metrics": trained.test_metrics, "approval_run": approval_run,
    }
    key = model.replace("_", "-")
    create_markdown_artifact(markdown=retrain_summary(model, week, outcome), key=f"{key}-retrain",
                             description=f"{model} {week}: {event}")
    create_table_artifact(table=outcome["comparison"], key=f"{key}-champion-vs-challenger")
    return outcome
