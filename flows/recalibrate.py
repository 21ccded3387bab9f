"""Recalibrate one model's champion between retrainings: check -> new calibrator + thresholds -> the same gates."""

from __future__ import annotations

import time
from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import iso_week, resolve_as_of
from features.training_set import NotEnoughData
from features.windows import labelled_frame, training_lineage
from flows.retrain import register_and_promote
from flows.runtime import Runtime
from models.recalibrate import Recalibration, lineage_tags, recalibrate_champion
from models.registry import CHAMPION
from models.report import retrain_summary
from models.retraining import Challenger, package_challenger


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"recalibrate-{params['model']}-{iso_week(resolve_as_of(params.get('as_of')))}"


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def load_training_set(model: str, as_of: datetime):
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    labelled = labelled_frame(runtime.store, spec, as_of)
    return labelled, training_lineage(runtime.store, spec, labelled, as_of)


@task(cache_policy=NO_CACHE)
def compare_recalibrated(model: str, result: Recalibration, lineage: dict, as_of: datetime) -> Challenger:
    runtime = Runtime.from_env()
    return package_challenger(runtime.store, runtime.registry, runtime.spec(model), as_of, result.split, result.trained,
                              lineage, started=time.perf_counter())


@task(cache_policy=NO_CACHE)
def check_and_recalibrate(model: str, labelled) -> tuple[Recalibration, dict[str, str]] | str:
    """The champion's check on the latest mature outcomes, and a recalibration when it is needed; or why not."""
    runtime = Runtime.from_env()
    spec = runtime.spec(model)
    version = runtime.registry.version_by_alias(model, CHAMPION)
    if version is None:
        return "no champion to recalibrate"
    champion = runtime.registry.load(model, CHAMPION)
    training_auc = float(version.tags.get("test_roc_auc", "nan"))
    try:
        result = recalibrate_champion(spec, labelled, champion, training_auc)
    except NotEnoughData as exc:
        return str(exc)
    return result, lineage_tags(dict(version.tags), str(version.version))


@flow(name="recalibrate", flow_run_name=_run_name)
def recalibrate_flow(model: str, as_of: datetime | None = None) -> dict:
    """A new calibrator and thresholds for the champion's pipeline when it is miscalibrated but still ranks well."""
    as_of = resolve_as_of(as_of)
    week = iso_week(as_of)
    if not Runtime.from_env().spec(model).recalibration.enabled:
        return {"status": "disabled", "model": model, "week": week}
    labelled, lineage = load_training_set(model, as_of)
    checked = check_and_recalibrate(model, labelled)
    key = f"{model.replace('_', '-')}-recalibrate"
    if isinstance(checked, str):
        return {"status": "not_checked", "reason": checked, "model": model, "week": week}
    result, tags = checked
    if result.trained is None or result.split is None:
        outcome = {"status": "not_needed", "reason": result.check.reason, "check": result.check.as_dict(),
                   "model": model, "week": week}
        create_markdown_artifact(markdown=f"# Recalibration `{model}`, {week}\n\n{result.check.reason}", key=key)
        return outcome
    challenger = compare_recalibrated(model, result, {**lineage, "recalibrated_from": tags["recalibrated_from"]}, as_of)
    outcome = register_and_promote(challenger, week, as_of, tags)
    outcome |= {"status": "recalibrated", "check": result.check.as_dict(), "recalibration_reason": result.check.reason}
    create_markdown_artifact(markdown=retrain_summary(model, week, outcome), key=key,
                             description=f"{model} {week}: recalibrated, {outcome['event']}")
    return outcome
