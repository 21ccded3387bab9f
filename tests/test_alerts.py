"""Alerts reach a webhook: a real local Prefect server (started here) runs the automations, and a
local HTTP receiver (started here) is the webhook. No network beyond loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                               "--no-ui", "--analytics-off"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("the local Prefect server did not start within 90 s")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def receiver():
    _Receiver.received = []
    httpd = HTTPServer(("127.0.0.1", _free_port()), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", _Receiver.received
    httpd.shutdown()


def _wait_for(messages: list[dict], count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while len(messages) < count and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
def test_loop_events_and_failed_runs_reach_the_webhook(prefect_server, receiver):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from flows.alerts import emit, ensure_alert_automations

    url, messages = receiver
    with temporary_settings(updates={PREFECT_API_URL: prefect_server, PREFECT_LOGGING_TO_API_ENABLED: False}):
        names = ensure_alert_automations(url)
        assert len(names) == 5
        assert ensure_alert_automations(url) == names          # idempotent: replaced, not duplicated
        time.sleep(2)                                           # the server loads new automations
        emit("loop.drift.detected", "lead_scoring", {"drifted_columns": "source"})
        emit("loop.promotion.awaiting_approval", "reply_acceptance", {"version": "7"})
        _wait_for(messages, 2)

        @flow(name="always-fails")
        def always_fails():
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            always_fails()
        _wait_for(messages, 3)
        # The events worker is one per process: empty it while its server is up, so later tests
        # (on the session's harness) get a fresh one instead of one bound to a stopped server.
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)

    subjects = sorted(m["subject"] for m in messages)
    assert len(messages) == 3, messages
    assert subjects[0].startswith("A loop run failed")
    assert subjects[1] == "A promotion waits for approval: loop.model.reply_acceptance"
    assert subjects[2] == "Drift alarm for loop.model.lead_scoring"
    drift = next(m for m in messages if m["subject"].startswith("Drift"))
    assert "drifted_columns" in drift["text"] and "source" in drift["text"]
