"""The production setup on a real PostgreSQL (issue 6, parts 3 and 6), all on loopback.

A throw-away PostgreSQL cluster (initdb with password authentication) gets its roles and databases
from deploy/postgres-init.sh; the Prefect server and the MLflow tracking server start from
deploy/prefect-server.sh and deploy/mlflow-server.sh with authentication on, as compose.yaml starts
them; the worker (deploy/worker.sh, `loop serve`) runs the weekly-cycle deployment on four simulated
weeks dropped into its inbox; the scoring service (deploy/api.sh) serves the champion that cycle
promoted. The assertions read Prefect's and MLflow's own PostgreSQL tables as well as their APIs.

Opt-in and slow (about two minutes on an idle 2-core machine): `make test-postgres` installs
Debian's PostgreSQL when it is missing and the server requirements, then runs this module with
LOOP_TEST_POSTGRES=1. Without PostgreSQL binaries or the server requirements the tests are skipped
with the reason. Every process started here is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import pytest

from tests.helpers import free_port, wait_until

# The module's fixtures start everything once; on a busy machine that alone can pass the suite's 600 s default.
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MODELS = ("lead_scoring", "reply_acceptance")
# Three hours after the fourth simulated week ended: the weekly cycle of ISO week 2026-W06.
AS_OF, WEEK = "2026-02-02T02:00:00+00:00", "2026-W06"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LEAD = {"entity_ref": "anna@example.com", "source": "referral", "industry": "retail", "region": "nord",
        "company_size": 40.0, "pages_visited": 6.0, "email_opens": 2.0, "requested_demo": False}


def _postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live: on PATH, or in Debian's versioned folder (newest first)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    return Path(found[0]).parent if found else None


class _Processes:
    """Child processes in their own process groups, stopped (group and all) when the block ends."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def __enter__(self) -> Self:
        return self

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process, log))
        return process

    def log(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def alive(self, name: str) -> subprocess.Popen:
        """The process, or a failure with its log when it has exited."""
        process = next(p for n, p, _ in self.started if n == name)
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)}")
        return process

    def __exit__(self, *exc) -> None:
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, log in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # `loop serve` pauses its deployments first; no need to wait for that here
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.close()


@dataclass(frozen=True)
class Cluster:
    port: int
    prefect_password: str
    mlflow_password: str

    def connect(self, database: str, user: str, password: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, dbname=database, user=user, password=password,
                                connect_timeout=10)

    def query(self, database: str, user: str, password: str, sql: str) -> list[tuple]:
        with self.connect(database, user, password) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
        conn.close()
        return rows


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster on 127.0.0.1 (free port, temp folder) with the setup's roles and databases."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: "
                    "`make test-postgres` installs Debian's postgresql package")
    for module in ("psycopg2", "flask_wtf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: `pip install -r requirements-server.txt` (`make test-postgres` does)")
    folder = Path(tempfile.mkdtemp(prefix="loop-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no 'postgres' user to run the cluster as")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    superuser_password = secrets.token_urlsafe(16)
    pwfile = folder / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    pwfile.chmod(0o600)
    if as_postgres:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    data, port = folder / "data", free_port()
    started = False
    try:
        initdb = subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                 "--no-locale", "--auth=scram-sha-256", f"--pwfile={pwfile}"],
                                capture_output=True, text=True, check=False)
        assert initdb.returncode == 0, initdb.stdout + initdb.stderr
        pwfile.unlink()
        # fsync off: a throw-away cluster need not survive a power cut, and it saves seconds on a busy disk.
        start = subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"),
                                "-w", "-t", "60", "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off",
                                "start"], capture_output=True, text=True, check=False)
        started = start.returncode == 0
        assert started, start.stdout + start.stderr
        cluster = Cluster(port, secrets.token_urlsafe(16), secrets.token_urlsafe(16))
        init_env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PGHOST="127.0.0.1", PGPORT=str(port),
                        PGUSER="postgres", PGPASSWORD=superuser_password, PGDATABASE="postgres",
                        LOOP_PREFECT_DB_PASSWORD=cluster.prefect_password, LOOP_MLFLOW_DB_PASSWORD=cluster.mlflow_password)
        init = subprocess.run([str(DEPLOY / "postgres-init.sh")], env=init_env, capture_output=True, text=True, check=False)
        assert init.returncode == 0, init.stdout + init.stderr
        yield cluster
    finally:
        if started:
            subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Servers:
    work: Path
    prefect_url: str
    prefect_auth: tuple[str, str]
    mlflow_url: str
    mlflow_auth: tuple[str, str]
    artifacts: Path

    def client_env(self, **extra: str) -> dict[str, str]:
        """What compose.yaml gives the worker and the scoring service, pointed at this test's servers."""
        env = _base_env()
        env.update(LOOP_HOME=str(self.work / "loop"), LOOP_PSEUDONYM_KEY="postgres-test-pseudonym-key",
                   LOOP_SPECS_DIR=str(_quick_specs(self.work / "specs")),
                   PREFECT_HOME=str(self.work / "client-prefect"), PREFECT_API_URL=self.prefect_url,
                   PREFECT_API_AUTH_STRING=":".join(self.prefect_auth), MLFLOW_TRACKING_URI=self.mlflow_url,
                   MLFLOW_TRACKING_USERNAME=self.mlflow_auth[0], MLFLOW_TRACKING_PASSWORD=self.mlflow_auth[1], **extra)
        return env


def _quick_specs(folder: Path) -> Path:
    """The shipped specs with the fewest bootstrap draws the spec allows (100, not 1,000): the promotion
    evidence is tested elsewhere; here the draws would only make the weekly cycle minutes longer."""
    if not folder.exists():
        folder.mkdir()
        for spec in (REPO / "data" / "specs").glob("*.toml"):
            text = spec.read_text()
            assert text.count("\n[gates]\n") == 1 and "bootstrap_resamples" not in text
            (folder / spec.name).write_text(text.replace("\n[gates]\n", "\n[gates]\nbootstrap_resamples = 100\n"))
    return folder


def _base_env() -> dict[str, str]:
    """This checkout's interpreter and code, none of the session's local Prefect/MLflow/loop settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOP_", "PREFECT_", "MLFLOW_", "PG"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
               PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true")
    return env


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def servers(postgres: Cluster, tmp_path_factory):
    """The Prefect and MLflow servers of the production setup, on PostgreSQL, with authentication."""
    work = tmp_path_factory.mktemp("production")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_auth = ("loop", secrets.token_urlsafe(16))
    mlflow_auth = ("loop-admin", secrets.token_urlsafe(16))
    artifacts = work / "mlflow-artifacts"
    prefect_env = _base_env() | {
        "PREFECT_HOME": str(work / "prefect-server"), "PREFECT_SERVER_API_PORT": str(prefect_port),
        "PREFECT_SERVER_API_AUTH_STRING": ":".join(prefect_auth), "PREFECT_SERVER_DATABASE_HOST": "127.0.0.1",
        "PREFECT_SERVER_DATABASE_PORT": str(postgres.port), "PREFECT_SERVER_DATABASE_PASSWORD": postgres.prefect_password}
    database = f"postgresql+psycopg2://mlflow@127.0.0.1:{postgres.port}"
    mlflow_env = _base_env() | {
        "MLFLOW_BACKEND_STORE_URI": f"{database}/mlflow", "LOOP_MLFLOW_AUTH_DB_URI": f"{database}/mlflow_auth",
        "PGPASSWORD": postgres.mlflow_password, "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_ADMIN_USERNAME": mlflow_auth[0], "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_auth[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "LOOP_MLFLOW_PORT": str(mlflow_port),
        "LOOP_MLFLOW_WORKERS": "1", "TMPDIR": str(work)}
    with _Processes(work) as processes:
        processes.start("prefect-server", [str(DEPLOY / "prefect-server.sh")], prefect_env)
        processes.start("mlflow-server", [str(DEPLOY / "mlflow-server.sh")], mlflow_env)
        prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
        # Health endpoints answer without credentials (for probes); everything else needs them.
        wait_until(lambda: processes.alive("prefect-server") and _healthy(f"{prefect_url}/health"),
                   "the Prefect server on PostgreSQL", 180, poll=0.5)
        wait_until(lambda: processes.alive("mlflow-server") and _healthy(f"{mlflow_url}/health"),
                   "the MLflow server on PostgreSQL", 180, poll=0.5)
        yield Servers(work, prefect_url, prefect_auth, mlflow_url, mlflow_auth, artifacts)


@dataclass(frozen=True)
class Cycle:
    flow_run: dict
    seconds: float


@pytest.fixture(scope="module")
def weekly_cycle(servers: Servers):
    """Four simulated weeks in the worker's inbox, then one run of the served weekly-cycle deployment."""
    env = servers.client_env(PREFECT_RUNNER_POLL_FREQUENCY="2")
    inbox = servers.work / "loop" / "inbox"
    # Half the demo's e-mails keep the cycle short; both models still get the labelled rows their specs need.
    simulate = subprocess.run([sys.executable, "-m", "flows.cli", "simulate", "--weeks", "4", "--leads", "2000",
                               "--emails", "2500", "--out", str(inbox)], env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    with _Processes(servers.work) as processes, httpx.Client(base_url=servers.prefect_url, auth=servers.prefect_auth,
                                                              timeout=30) as prefect:
        processes.start("worker", [str(DEPLOY / "worker.sh")], env)

        def deployment() -> dict | None:
            processes.alive("worker")
            found = prefect.get("/deployments/name/self-optimise/weekly-cycle")
            return found.json() if found.status_code == 200 else None

        weekly = wait_until(deployment, "the worker to register the weekly-cycle deployment", 180, poll=1)
        started = time.monotonic()
        created = prefect.post(f"/deployments/{weekly['id']}/create_flow_run", json={"parameters": {"as_of": AS_OF}})
        assert created.status_code == 201, created.text

        def finished() -> dict | None:
            processes.alive("worker")
            run = prefect.get(f"/flow_runs/{created.json()['id']}").json()
            return run if run["state_type"] in FINAL else None

        run = wait_until(finished, "the served weekly cycle to end", 900, poll=2)
        assert run["state_type"] == "COMPLETED", (run["state"], processes.log("worker"))
        yield Cycle(run, time.monotonic() - started)


def test_the_servers_refuse_requests_without_valid_credentials(servers: Servers, postgres: Cluster):
    wrong = ("loop", "not-the-password")
    prefect_api = f"{servers.prefect_url}/flow_runs/filter"
    assert httpx.post(prefect_api, json={}).status_code == 401
    assert httpx.post(prefect_api, json={}, auth=wrong).status_code == 401
    assert httpx.post(prefect_api, json={}, auth=servers.prefect_auth).status_code == 200

    mlflow_api = f"{servers.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(mlflow_api).status_code == 401
    assert httpx.get(mlflow_api, auth=(servers.mlflow_auth[0], "not-the-password")).status_code == 401
    assert httpx.get(mlflow_api, auth=servers.mlflow_auth).status_code == 200
    assert httpx.get(f"{servers.mlflow_url}/").status_code == 401           # the UI too

    # Each server's role reaches its own databases only.
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        postgres.connect("mlflow", "prefect", postgres.prefect_password)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        postgres.connect("prefect", "prefect", "not-the-password")
    # MLflow keeps its users in PostgreSQL too: the admin from the environment, and nobody else.
    assert postgres.query("mlflow_auth", "mlflow", postgres.mlflow_password, "SELECT username, is_admin FROM users") == [
        (servers.mlflow_auth[0], True)]


def test_a_weekly_cycle_run_by_the_worker_lands_in_postgres(weekly_cycle: Cycle, servers: Servers, postgres: Cluster,
                                                            monkeypatch):
    print(f"weekly cycle on the PostgreSQL-backed servers: {weekly_cycle.seconds:.0f} s")
    assert weekly_cycle.flow_run["name"] == f"self-optimise-{WEEK}"
    expected = {f"self-optimise-{WEEK}"} | {f"{kind}-{m}-{WEEK}" for kind in ("monitor", "retrain") for m in MODELS}

    # Prefect: the runs through the authenticated API, and the same runs in its PostgreSQL tables.
    runs = httpx.post(f"{servers.prefect_url}/flow_runs/filter", json={}, auth=servers.prefect_auth).json()
    assert expected <= {r["name"] for r in runs if r["state_type"] == "COMPLETED"}
    in_postgres = postgres.query("prefect", "prefect", postgres.prefect_password,
                                 "SELECT name, state_type FROM flow_run")
    assert expected <= {name for name, state in in_postgres if state == "COMPLETED"}
    deployments = postgres.query("prefect", "prefect", postgres.prefect_password, "SELECT name FROM deployment")
    assert {"weekly-cycle", "retrain-lead_scoring-weekly", "approve-promotion"} <= {name for (name,) in deployments}

    # MLflow: each model has a promoted champion whose run holds the model and its card, stored through the
    # server's artifact proxy in the artifact destination; registry and aliases are rows in PostgreSQL.
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", servers.mlflow_auth[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", servers.mlflow_auth[1])
    client = mlflow.MlflowClient(tracking_uri=servers.mlflow_url, registry_uri=servers.mlflow_url)
    champions, run_ids = {}, {}
    for model in MODELS:
        champion = client.get_model_version_by_alias(model, "champion")
        assert champion.tags["decision"] == "promoted" and champion.tags["week"] == WEEK
        assert {"model_card.md", "spec.toml", "lineage.json"} <= {a.path for a in client.list_artifacts(champion.run_id)}
        champions[model], run_ids[model] = str(champion.version), champion.run_id
    files = [p.relative_to(servers.artifacts).as_posix() for p in servers.artifacts.rglob("*") if p.is_file()]
    for run_id in run_ids.values():
        assert any(run_id in f and f.endswith("model_card.md") for f in files), files
    assert sum(f.endswith("MLmodel") for f in files) >= len(MODELS), files
    aliases = postgres.query("mlflow", "mlflow", postgres.mlflow_password,
                             "SELECT name, alias, version FROM registered_model_aliases")
    assert {(m, "champion", int(v)) for m, v in champions.items()} <= set(aliases)


def test_the_scoring_service_serves_the_champion_from_the_authenticated_registry(weekly_cycle: Cycle, servers: Servers):
    import mlflow

    token = secrets.token_urlsafe(24)
    port = free_port()
    env = servers.client_env(LOOP_API_TOKEN=token, LOOP_API_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    with _Processes(servers.work) as processes:
        processes.start("api", [str(DEPLOY / "api.sh")], env)
        wait_until(lambda: processes.alive("api") and _healthy(f"{url}/readyz"), "the scoring service", 120, poll=0.5)
        decide = f"{url}/v1/lead_scoring/decide"
        assert httpx.post(decide, json={"entities": [LEAD]}, timeout=30).status_code == 401
        answer = httpx.post(decide, json={"entities": [LEAD]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
    client = mlflow.MlflowClient(tracking_uri=servers.mlflow_url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", servers.mlflow_auth[0])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", servers.mlflow_auth[1])
        champion = client.get_model_version_by_alias("lead_scoring", "champion")
    assert answer.json()["model_version"] == str(champion.version)
    assert answer.json()["threshold"] == pytest.approx(float(champion.tags["threshold"]))
