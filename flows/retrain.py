"""Retrain one model: mature training set -> fit + calibrate + threshold -> MLflow -> gates -> alias."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.settings import Settings
from features.spec import ModelSpec
from flows.alerts import emit
from flows.approval import request_approval
from flows.runtime import Runtime, execution_site, task_runner
from models.evaluation import Comparison, comparison_table
from models.model_card import model_card
from models.promotion import AuditTrail, apply_decision
from models.report import retrain_summary
from models.retraining import Challenger, prepare_challenger


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"retrain-{params['model']}-{iso_week(resolve_as_of(params.get('as_of')))}"


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def train_challenger(settings: Settings, specs: dict[str, ModelSpec], model: str, as_of: datetime) -> Challenger | str:
    """The CPU-heavy half, on whichever worker the task runner picks (a thread here or a Dask worker process).

    Settings and specs travel with the task, so a worker reads the same store and registry as the flow
    process whatever its own environment says.
    """
    runtime = Runtime(settings, specs)
    prepared = prepare_challenger(runtime.store, runtime.registry, runtime.spec(model), as_of)
    return replace(prepared, trained_on=execution_site()) if isinstance(prepared, Challenger) else prepared


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_and_register(challenger: Challenger, week: str, tags: dict[str, str] | None = None) -> tuple[str, str]:
    runtime = Runtime.from_env()
    model = challenger.model
    spec = runtime.spec(model)
    kind = (tags or {}).get("kind", "train")
    with tempfile.TemporaryDirectory(prefix="loop-plots-") as tmp:
        plots = {}
        for name, content in challenger.plots.items():
            plots[name] = Path(tmp) / name
            plots[name].write_bytes(content)
        run_id, version = runtime.registry.log_training(spec, challenger.trained, lineage=challenger.lineage,
                                                        input_example=challenger.example, week=week, plots=plots,
                                                        run_name=f"{kind}-{model}-{week}", tags=tags)
    card = model_card(spec, challenger.trained, challenger.test, challenger.lineage, version,
                      intervals=challenger.card_intervals)
    runtime.registry.attach_model_card(model, version, run_id, card)
    return run_id, version


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


@flow(name="retrain", flow_run_name=_run_name, task_runner=task_runner(Settings.from_env()))
def retrain_flow(model: str, as_of: datetime | None = None, challenger: Any = None) -> dict:
    """Train a challenger on mature outcomes, register it, and promote it if the spec's gates pass.

    ``challenger`` is the trained half when the caller ran it already: the weekly cycle submits every
    due model's ``train_challenger`` to its task runner at once and passes each model's future, which
    Prefect resolves here. Without it, this run submits the training to its own task runner.
    Registering, gating and auditing run here, in the flow process, one model at a time.
    """
    as_of = resolve_as_of(as_of)
    week = iso_week(as_of)
    if challenger is None:
        runtime = Runtime.from_env()
        challenger = train_challenger.submit(runtime.settings.for_workers(), runtime.specs, model, as_of).result()
    if isinstance(challenger, str):
        record_skip(model, challenger, week, as_of)
        outcome = {"status": "skipped", "reason": challenger, "model": model, "week": week}
        create_markdown_artifact(markdown=retrain_summary(model, week, outcome), key=f"{model.replace('_', '-')}-retrain")
        return outcome
    return register_and_promote(challenger, week, as_of)


def register_and_promote(challenger: Challenger, week: str, as_of: datetime, tags: dict[str, str] | None = None) -> dict:
    """Register a trained challenger, apply the gates to its comparison and report (inside a flow: retrain, recalibrate)."""
    model = challenger.model
    trained, comparison, lineage = challenger.trained, challenger.comparison, challenger.lineage
    run_id, version = log_and_register(challenger, week, tags)
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
        "spec_hash": lineage["spec_hash"], "split": challenger.sizes, "comparison": comparison_table(comparison),
        "flip_share": comparison.flip_share,
        "differences": comparison.evidence.table() if comparison.evidence else [],
        "policy_values": comparison.evidence.value_table() if comparison.evidence else [],
        "one_sided_alpha": comparison.evidence.one_sided_alpha if comparison.evidence else None,
        "test_metrics": trained.test_metrics, "approval_run": approval_run,
        "trained_on": challenger.trained_on, "train_seconds": round(challenger.seconds, 2),
    }
    key = model.replace("_", "-")
    create_markdown_artifact(markdown=retrain_summary(model, week, outcome), key=f"{key}-retrain",
                             description=f"{model} {week}: {event}")
    create_table_artifact(table=outcome["comparison"], key=f"{key}-champion-vs-challenger")
    return outcome
