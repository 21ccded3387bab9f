"""Prefect's Dask task runner, refusing to start without a Prefect server the workers can report to.

Each task a Dask worker runs reports its state to the Prefect API named in the flow's settings. The
ephemeral API lives inside the flow process, so without ``PREFECT_API_URL`` every worker process
would start an ephemeral server of its own on the same SQLite file (seen here: they time out).
"""

from __future__ import annotations

from prefect.settings import get_current_settings
from prefect_dask import DaskTaskRunner

from features.settings import SettingsError


class ServerDaskTaskRunner(DaskTaskRunner):
    def __enter__(self):
        if not get_current_settings().api.url:
            raise SettingsError("LOOP_TASK_RUNNER=dask needs a Prefect server the Dask workers can reach: start one "
                                "(`prefect server start --host 127.0.0.1`) and set PREFECT_API_URL, e.g. "
                                "http://127.0.0.1:4200/api")
        return super().__enter__()
