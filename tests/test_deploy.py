"""The production setup's files, checked without starting anything (fast; part of `make test`).

compose.yaml starts each service with the deploy/ script that `make test-postgres` runs against a real
PostgreSQL (tests/test_postgres.py), publishes on loopback unless told otherwise, and takes every
secret from the environment; every variable is documented; the scripts refuse to start a server
without authentication, on SQLite, or with a password in a database URI, and bind to 127.0.0.1 by
default. The scripts run for real here, with a stand-in for the Python interpreter they would exec.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "AUTH_STRING", "PSEUDONYM_KEY", "ACCESS_KEY")
# Names other software owns: the postgres image's and libpq's own variables, and the scripts' interpreter override.
OWNED_ELSEWHERE = {"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "PGUSER", "PGDATABASE", "PYTHON"}


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_every_service_starts_with_the_deploy_script_the_postgres_test_runs():
    services = _compose()["services"]
    assert set(services) == {"postgres", "prefect", "mlflow", "worker", "api"}
    commands = {name: service["command"] for name, service in services.items() if "command" in service}
    assert commands == {"prefect": ["deploy/prefect-server.sh"], "mlflow": ["deploy/mlflow-server.sh"],
                        "worker": ["deploy/worker.sh"], "api": ["deploy/api.sh"]}
    assert "./deploy/postgres-init.sh:/docker-entrypoint-initdb.d/10-loop.sh:ro" in services["postgres"]["volumes"]
    started_by_test = set(re.findall(r'DEPLOY / "([a-z-]+\.sh)"', (REPO / "tests" / "test_postgres.py").read_text()))
    for script in [*(c[0] for c in commands.values()), "deploy/postgres-init.sh"]:
        assert os.access(REPO / script, os.X_OK), f"{script} is missing or not executable"
        assert Path(script).name in started_by_test, f"{script} is not exercised by tests/test_postgres.py"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY deploy deploy" in dockerfile and "-r requirements-server.txt" in dockerfile


def test_published_ports_are_on_loopback_unless_told_otherwise():
    services = _compose()["services"]
    assert "ports" not in services["postgres"]       # only the other containers reach the database
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"prefect", "mlflow", "api"}
    for name, port in published:
        assert port.startswith("${LOOP_PUBLISH_ADDRESS:-127.0.0.1}:"), (name, port)


def test_secrets_come_from_the_environment_and_never_from_the_repository():
    for name, service in _compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if any(word in key for word in SECRET_WORDS):
                # Required (`${X:?message}`) or optional and empty (`${X:-}`): never a literal, never a default value.
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)\}", str(value)), (name, key, value)
    example = (REPO / ".env.example").read_text()
    for line in example.splitlines():
        key, _, value = line.partition("=")
        if not line.startswith("#") and value and any(word in key for word in SECRET_WORDS):
            assert value.endswith("change-me"), f".env.example holds a value for {key}"
    for ignored in (".env", "inbox/x.csv"):
        assert subprocess.run(["git", "check-ignore", "-q", ignored], cwd=REPO, check=False).returncode == 0, f"{ignored} is not git-ignored"
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()


def test_every_variable_of_the_setup_is_documented_in_settings_and_readme():
    from features.settings import DOCUMENTED, PRODUCTION

    compose_text = (REPO / "compose.yaml").read_text()
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    names |= {key for service in _compose()["services"].values() for key in service.get("environment", {})}
    names |= set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), flags=re.MULTILINE))
    for script in DEPLOY.glob("*.sh"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script.read_text()))
    undocumented = names - set(DOCUMENTED) - set(PRODUCTION) - OWNED_ELSEWHERE
    assert not undocumented, f"document these in features/settings.py: {sorted(undocumented)}"
    readme = (REPO / "README.md").read_text()
    missing = [name for name in PRODUCTION if f"`{name}`" not in readme]
    assert not missing, f"README.md's production section does not explain {missing}"


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """Stands in for the interpreter the scripts exec: prints what the server would have been started with."""
    path = tmp_path / "python"
    path.write_text('#!/bin/sh\necho "args: $*"\necho "PREFECT_SERVER_API_HOST=$PREFECT_SERVER_API_HOST"\n'
                    'echo "PREFECT_API_URL=${PREFECT_API_URL:-unset}"\n'
                    '[ -n "$MLFLOW_AUTH_CONFIG_PATH" ] && cat "$MLFLOW_AUTH_CONFIG_PATH"\nexit 0\n')
    path.chmod(0o755)
    return path


def _run(script: str, python: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEPLOY / script)], env={"PATH": os.environ["PATH"], "PYTHON": str(python), **env},
                          capture_output=True, text=True, timeout=30, check=False)


PREFECT = {"PREFECT_SERVER_API_AUTH_STRING": "loop:s3cret-for-tests", "PREFECT_SERVER_DATABASE_HOST": "db",
           "PREFECT_SERVER_DATABASE_PASSWORD": "db-s3cret"}
MLFLOW = {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow@db:5432/mlflow",
          "LOOP_MLFLOW_AUTH_DB_URI": "postgresql+psycopg2://mlflow@db:5432/mlflow_auth", "PGPASSWORD": "db-s3cret",
          "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/artifacts", "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
          "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-s3cret-for-tests", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}


def test_the_prefect_server_starts_only_with_authentication_on_postgresql_and_on_loopback(fake_python, tmp_path):
    without_auth = _run("prefect-server.sh", fake_python, **{k: v for k, v in PREFECT.items() if "AUTH" not in k})
    assert without_auth.returncode != 0 and "PREFECT_SERVER_API_AUTH_STRING" in without_auth.stderr
    not_a_pair = _run("prefect-server.sh", fake_python, **(PREFECT | {"PREFECT_SERVER_API_AUTH_STRING": "s3cret"}))
    assert not_a_pair.returncode != 0 and "must look like user:password" in not_a_pair.stderr
    on_sqlite = _run("prefect-server.sh", fake_python, **{k: v for k, v in PREFECT.items() if "HOST" not in k})
    assert on_sqlite.returncode != 0 and "PostgreSQL, not on a SQLite file" in on_sqlite.stderr

    started = _run("prefect-server.sh", fake_python, PREFECT_API_URL="http://elsewhere/api", **PREFECT)
    assert started.returncode == 0, started.stderr
    assert "args: -m prefect server start --analytics-off" in started.stdout
    assert "PREFECT_SERVER_API_HOST=127.0.0.1" in started.stdout and "PREFECT_API_URL=unset" in started.stdout


def test_the_mlflow_server_starts_only_with_authentication_on_postgresql_and_on_loopback(fake_python, tmp_path):
    for missing in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        refused = _run("mlflow-server.sh", fake_python, **{k: v for k, v in MLFLOW.items() if k != missing})
        assert refused.returncode != 0 and missing in refused.stderr, (missing, refused.stderr)
    leaky = _run("mlflow-server.sh", fake_python,
                 **(MLFLOW | {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow:db-s3cret@db:5432/mlflow"}))
    assert leaky.returncode != 0 and "keep the password out of the database URI" in leaky.stderr
    for uri in ("sqlite:///mlflow.db", "postgresql://mlflow@db:5432/mlflow"):
        other = _run("mlflow-server.sh", fake_python, **(MLFLOW | {"MLFLOW_BACKEND_STORE_URI": uri}))
        assert other.returncode != 0 and "runs on PostgreSQL through psycopg2" in other.stderr, uri

    started = _run("mlflow-server.sh", fake_python, TMPDIR=str(tmp_path), **MLFLOW)
    assert started.returncode == 0, started.stderr
    assert "args: -m mlflow server --app-name basic-auth --host 127.0.0.1 --port 5000 --workers 2" in started.stdout
    # The auth config names the auth database and a closed default; no secret is written to it.
    assert "database_uri = postgresql+psycopg2://mlflow@db:5432/mlflow_auth" in started.stdout
    assert "default_permission = NO_PERMISSIONS" in started.stdout
    assert not any(secret in started.stdout for secret in ("db-s3cret", "admin-s3cret-for-tests"))


def test_the_worker_and_the_scoring_service_refuse_to_run_without_credentials(fake_python):
    client = {"PREFECT_API_URL": "http://prefect:4200/api", "PREFECT_API_AUTH_STRING": "loop:s3cret",
              "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "admin",
              "MLFLOW_TRACKING_PASSWORD": "s3cret", "LOOP_PSEUDONYM_KEY": "k", "LOOP_API_TOKEN": "t"}
    for script, needed in (("worker.sh", "PREFECT_API_AUTH_STRING"), ("worker.sh", "MLFLOW_TRACKING_PASSWORD"),
                           ("api.sh", "LOOP_API_TOKEN"), ("api.sh", "MLFLOW_TRACKING_USERNAME")):
        refused = _run(script, fake_python, **{k: v for k, v in client.items() if k != needed})
        assert refused.returncode != 0 and needed in refused.stderr, (script, needed)
    assert "args: -m flows.cli serve" in _run("worker.sh", fake_python, **client).stdout
    assert "args: -m flows.cli api" in _run("api.sh", fake_python, **client).stdout
