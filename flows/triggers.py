"""Event-driven retraining: the monitor emits `loop.retraining.triggered` for a model when the k-of-n
trigger fires (models/trigger.py), and an automation declared here starts that model's retraining
deployment. `loop serve` creates it: the trigger is part of the deployment, and Prefect replaces a
deployment's own automations each time the deployment is applied, so restarting serve never
duplicates it.
"""

from __future__ import annotations

RETRAINING_TRIGGERED = "loop.retraining.triggered"


def model_resource(model: str) -> str:
    return f"loop.model.{model}"


def retraining_automation(model: str):
    """Run `retrain-<model>-weekly` once per trigger event about ``model``.

    Reactive with threshold 1: every trigger event starts a run; the deployment's concurrency limit
    of 1 queues a second one instead of overlapping, and the trigger's own cooldown
    (models.trigger.RETRAIN_COOLDOWN) keeps the daily monitor from firing every day of one drift.
    """
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"loop-retrain-{model}-on-trigger",
        description=f"Retrain {model} when its monitor reports drift in k of n weeks or drift with a KPI drop",
        expect={RETRAINING_TRIGGERED}, match={"prefect.resource.id": model_resource(model)},
        posture="Reactive", threshold=1,
        # as_of stays unset: the run trains on everything known when it starts.
        parameters={"model": model},
    )
