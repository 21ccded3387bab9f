"""Test set-up: every test session gets its own state folder, a real Prefect (test harness on a
temporary SQLite DB), a real MLflow (SQLite in a temp dir) and real Delta tables on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports prefect: its home and DB must live in the session's temp folder.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="loop-tests-"))
os.environ["LOOP_HOME"] = str(_SESSION_HOME / "loop")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["LOOP_PSEUDONYM_KEY"] = "test-only-pseudonym-key"

import pytest  # noqa: E402

from features.settings import prepare_environment  # noqa: E402
from features.spec import load_specs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """The PostgreSQL production-setup tests start a database and three servers: only on request."""
    if os.environ.get("LOOP_TEST_POSTGRES") == "1":
        return
    opt_in = pytest.mark.skip(reason="opt-in: `make test-postgres` runs the PostgreSQL production-setup tests")
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(opt_in)


@pytest.fixture(scope="session")
def specs():
    return load_specs(REPO / "data" / "specs")


@pytest.fixture
def loop_home(tmp_path, monkeypatch):
    """A fresh, empty state folder for one test (store, MLflow DB and artifacts, reports)."""
    home = tmp_path / "loop"
    monkeypatch.setenv("LOOP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    monkeypatch.delenv("LOOP_STORE_URI", raising=False)
    monkeypatch.delenv("LOOP_INBOX", raising=False)
    prepare_environment()
    return home


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect API on a temporary SQLite DB, shared by the session's flow tests."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        # Flow heartbeats cost ~1 s per flow run joining their thread; tests do not need them.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
