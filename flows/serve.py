"""Deployments with schedules, served by one process (`loop serve`)."""

from __future__ import annotations

from datetime import timedelta

from prefect.schedules import Cron, Interval

BERLIN = "Europe/Berlin"
WEEKLY_MONDAY_0300 = "0 3 * * 1"
DAILY_0600 = "0 6 * * *"
DAILY_0430 = "30 4 * * *"


def build_deployments(models: list[str]) -> list:
    """Inbox ingest every 15 minutes, the weekly cycle and per-model retraining Monday 03:00 Berlin, daily monitoring,
    daily store maintenance (retention, compaction, vacuum) at 04:30.

    Retraining of one model never overlaps itself (concurrency limit 1 per deployment). Each retraining
    deployment also carries the automation that starts it on `loop.retraining.triggered` for its model
    (flows/triggers.py): retraining on evidence, not only on the calendar. Served runs of monitoring and
    retraining retry the whole flow with growing delays after their tasks' own retries are spent (a
    tracking server or store that is down for minutes); then the run ends Failed with the exception as
    its state message. The approval deployment has no schedule: the retraining starts one run per promotion
    waiting for a person, and those runs wait in parallel (no limit), outside the retraining's slot.
    """
    from flows.approval import approval_flow
    from flows.ingest import ingest_inbox_flow
    from flows.maintenance import maintenance_flow
    from flows.monitor import monitor_flow
    from flows.retrain import retrain_flow
    from flows.self_optimise import self_optimise_flow
    from flows.triggers import retraining_automation

    # Flow-level retries only for served runs: in-process calls (CLI, demo, weekly cycle) keep failing fast.
    monitor = monitor_flow.with_options(retries=2, retry_delay_seconds=[60, 300])
    retrain = retrain_flow.with_options(retries=1, retry_delay_seconds=[300])

    deployments = [
        ingest_inbox_flow.to_deployment(name="inbox-every-15-minutes", schedule=Interval(timedelta(minutes=15))),
        self_optimise_flow.to_deployment(name="weekly-cycle", schedule=Cron(WEEKLY_MONDAY_0300, timezone=BERLIN),
                                         concurrency_limit=1),
        maintenance_flow.to_deployment(name="store-maintenance-daily", schedule=Cron(DAILY_0430, timezone=BERLIN),
                                       concurrency_limit=1),
        approval_flow.to_deployment(name="approve-promotion"),
    ]
    for model in models:
        deployments.append(monitor.to_deployment(name=f"monitor-{model}-daily", parameters={"model": model},
                                                 schedule=Cron(DAILY_0600, timezone=BERLIN)))
        deployments.append(retrain.to_deployment(name=f"retrain-{model}-weekly", parameters={"model": model},
                                                 schedule=Cron(WEEKLY_MONDAY_0300, timezone=BERLIN),
                                                 concurrency_limit=1, triggers=[retraining_automation(model)]))
    return deployments


def serve_all(models: list[str]) -> None:
    from prefect import serve

    serve(*build_deployments(models))
