"""Deployments with schedules, served by one process (`loop serve`)."""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron, Interval

BERLIN = "Europe/Berlin"


def serve_all(models: list[str]) -> None:
    from datetime import timedelta

    from flows.ingest import ingest_inbox_flow
    from flows.monitor import monitor_flow
    from flows.retrain import retrain_flow
    from flows.self_optimise import self_optimise_flow

    deployments = [
        ingest_inbox_flow.to_deployment(name="inbox-every-15-minutes", schedule=Interval(timedelta(minutes=15))),
        self_optimise_flow.to_deployment(name="weekly-cycle", schedule=Cron("0 3 * * 1", timezone=BERLIN),
                                         concurrency_limit=1),
    ]
    for model in models:
        deployments.append(monitor_flow.to_deployment(name=f"monitor-{model}-daily", parameters={"model": model},
                                                      schedule=Cron("0 6 * * *", timezone=BERLIN)))
        deployments.append(retrain_flow.to_deployment(name=f"retrain-{model}-weekly", parameters={"model": model},
                                                      schedule=Cron("0 3 * * 1", timezone=BERLIN), concurrency_limit=1))
    serve(*deployments)
