"""Wiring shared by flows and the CLI: settings, specs, store and registry from the environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cached_property

from features.settings import Settings, prepare_environment
from features.spec import ModelSpec, load_specs
from features.store import EventStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    specs: dict[str, ModelSpec]

    @classmethod
    def from_env(cls) -> "Runtime":
        settings = prepare_environment()
        return cls(settings, load_specs(settings.specs_dir))

    @cached_property
    def store(self) -> EventStore:
        return EventStore(self.settings.store_uri, self.specs)

    @cached_property
    def registry(self):
        from models.registry import Registry  # mlflow import is heavy; only commands that need it pay

        return Registry(self.settings)

    def spec(self, model: str) -> ModelSpec:
        if model not in self.specs:
            raise KeyError(f"unknown model '{model}'; specs in {self.settings.specs_dir}: {', '.join(self.specs)}")
        return self.specs[model]


def task_runner(settings: Settings):
    """The Prefect task runner ``LOOP_TASK_RUNNER`` names, for flows that submit one coarse task per model.

    ``threads``: Prefect's default thread pool in the flow process (scikit-learn releases the GIL while
    it fits). ``dask``: the scheduler at ``LOOP_DASK_ADDRESS``, or a temporary ``LocalCluster`` of
    ``LOOP_DASK_WORKERS`` single-threaded processes bound to 127.0.0.1; either needs a Prefect server
    (``PREFECT_API_URL``). The cluster is only started or joined when the first task is submitted, so
    a flow that submits nothing pays nothing.
    """
    if settings.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from flows.dask_runner import ServerDaskTaskRunner as DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    # One thread per worker: a fit runs in one process at a time, and distributed already gives each
    # worker OMP_NUM_THREADS=1, so workers = cores keeps the machine busy without oversubscription.
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "host": "127.0.0.1", "dashboard_address": None})


def execution_site() -> str:
    """Where the calling code runs: a Dask worker's address, or this host and process."""
    try:
        from distributed import get_worker

        return f"dask worker {get_worker().address}"
    except (ImportError, ValueError):  # not inside a Dask worker
        return f"process {os.getpid()} on {socket.gethostname()}"
