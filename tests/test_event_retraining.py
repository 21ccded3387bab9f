"""Event-driven retraining end to end: a real local Prefect server (started here), `loop serve` in a
child process registering the deployments and their automations, a `loop.retraining.triggered`
event, and the retraining deployment's run that the automation creates, executed by the served
process to a final state. Nothing is mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.triggers import RETRAINING_TRIGGERED
from tests.helpers import wait_until
from tests.test_alerts import prefect_server  # noqa: F401 - the fixture that starts a real Prefect server

REPO = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.slow
def test_a_trigger_event_starts_the_models_retraining_deployment_and_the_run_completes(prefect_server, tmp_path):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.worker import EventsWorker
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    from flows.alerts import emit

    home = tmp_path / "loop"
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "serve-prefect"),
               LOOP_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
               PYTHONPATH=str(REPO), PREFECT_RUNNER_POLL_FREQUENCY="2", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for name in ("LOOP_STORE_URI", "LOOP_INBOX", "LOOP_ALERT_WEBHOOK_URL"):
        env.pop(name, None)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([sys.executable, "-c", "from flows.cli import main; main()", "serve"], cwd=REPO, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_LOGGING_TO_API_ENABLED: False}):
            with get_client(sync_client=True) as client:
                def deployment(model: str):
                    try:
                        return client.read_deployment_by_name(f"retrain/retrain-{model}-weekly")
                    except ObjectNotFound:  # not registered yet; any other error fails at once, with its own message
                        return None

                def automation():
                    return client.read_automations_by_name("loop-retrain-lead_scoring-on-trigger")

                lead = wait_until(lambda: deployment("lead_scoring"), "loop serve to register the retraining deployment", 90)
                replies = wait_until(lambda: deployment("reply_acceptance"), "the second model's deployment", 30)
                assert lead.global_concurrency_limit.limit == 1 == replies.global_concurrency_limit.limit  # never overlap
                (rule,) = wait_until(automation, "the automation created by loop serve", 30)
                assert rule.trigger.expect == {RETRAINING_TRIGGERED}
                assert str(rule.actions[0].deployment_id) == str(lead.id)
                time.sleep(2)  # the server's trigger service loads new automations on a short interval

                def triggered_runs(dep):
                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                    return [r for r in runs if r.created_by is not None and r.created_by.type == "AUTOMATION"]

                assert triggered_runs(lead) == []
                # The events worker is one per process and keeps the API it was created for: flush one
                # an earlier test left (bound to the session's harness) so the event goes to this server.
                EventsWorker.drain_all(timeout=10)
                emit(RETRAINING_TRIGGERED, "lead_scoring", {"reason": "test: outside drift in 2 of the last 3 weeks"})
                EventsWorker.drain_all(timeout=10)

                (run,) = wait_until(lambda: triggered_runs(lead), "the automation to create a retraining run", 60)
                assert run.parameters == {"model": "lead_scoring"}
                done = wait_until(lambda: (r := client.read_flow_run(run.id)).state_type.value in FINAL and r,
                                  "the served process to run the retraining to a final state", 90)
                assert done.state_type.value == "COMPLETED", (done.state, (tmp_path / "serve.log").read_text()[-3000:])
                # The run really retrained against the (empty) store: too few labels is its normal answer.
                artifact = client.read_artifacts()
                texts = [a.data for a in artifact if a.key == "lead-scoring-retrain"]
                assert texts and "No new model" in texts[0] and "mature labelled rows" in texts[0]
                # The event was about lead_scoring only: the other model's deployment was not started.
                assert triggered_runs(replies) == []
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
