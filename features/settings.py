"""Runtime settings, read from environment variables with documented defaults.

Everything the loop writes lives under one folder (``LOOP_HOME``, default ``./.loop``) unless a
variable points a part elsewhere (a Prefect server, an MLflow tracking server, object storage).
Settings are read once into an immutable object and passed down; nothing here is global state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (default description, meaning): every setting in one place; README's settings table uses the same words.
DOCUMENTED = {
    "LOOP_HOME": ("./.loop", "folder for all runtime state (store, MLflow, Prefect, reports, demo output)"),
    "LOOP_STORE_URI": ("$LOOP_HOME/store", "where the Delta tables live (a path; object-store URIs later)"),
    "LOOP_SPECS_DIR": ("data/specs", "folder of model specs (one TOML file per model)"),
    "LOOP_INBOX": ("$LOOP_HOME/inbox", "folder the scheduled ingest picks files up from"),
    "LOOP_PSEUDONYM_KEY": ("none: required, except for `loop demo`", "secret key for pseudonymising lead/customer ids"),
    "LOOP_ALERT_WEBHOOK_URL": ("unset: no alerts", "webhook that drift alarms, pending approvals, rollbacks, guard shortfalls and failed runs are sent to"),
    "LOOP_RETENTION_MONTHS": ("24", "events older than this are dropped by the daily maintenance"),
    "LOOP_VACUUM_RETENTION_HOURS": ("168", "old Delta versions are vacuumed after this many hours"),
    "LOOP_INGEST_BATCH_ROWS": ("200000", "rows per batch when reading a file (memory vs speed)"),
    "LOOP_API_WAL": ("$LOOP_HOME/api-wal", "the scoring service's write-ahead log (one folder per service process)"),
    "LOOP_API_TOKEN": ("unset: no auth on 127.0.0.1", "bearer token the scoring API requires; needed to bind elsewhere"),
    "LOOP_API_FLUSH_SECONDS": ("10", "the scoring service moves its log into the store at least this often"),
    "LOOP_API_FLUSH_ROWS": ("50000", "... or as soon as this many rows wait in the log"),
    "LOOP_API_RELOAD_SECONDS": ("30", "how often the scoring service checks whether the champion alias moved"),
    "LOOP_API_HOST": ("127.0.0.1", "where `loop api` listens (the --host option); beyond loopback needs LOOP_API_TOKEN"),
    "LOOP_API_PORT": ("8000", "the port `loop api` listens on (the --port option)"),
    "LOOP_EVIDENTLY_WORKSPACE": ("$LOOP_HOME/evidently", "Evidently workspace: drift and weekly KPI snapshots, one project and dashboard per model"),
    "LOOP_MLFLOW_UI_URL": ("http://127.0.0.1:5000", "MLflow UI address the links in Prefect artifacts point to"),
    "LOOP_EVIDENTLY_UI_URL": ("http://127.0.0.1:8085", "Evidently UI address the links in Prefect artifacts point to"),
    "LOOP_TASK_RUNNER": ("threads", ("where the CPU-heavy part of retraining runs, one task per model: `threads` "
                                     "(the flow process) or `dask` (Dask worker processes)")),
    "LOOP_DASK_ADDRESS": ("unset: a temporary local cluster", ("scheduler of an existing Dask cluster to use with "
                                                               "`LOOP_TASK_RUNNER=dask`, e.g. tcp://10.0.0.5:8786")),
    "LOOP_DASK_WORKERS": ("the number of cores", "worker processes (one thread each) of the temporary local Dask cluster"),
    "MLFLOW_TRACKING_URI": ("sqlite:///$LOOP_HOME/mlflow/mlflow.db", "MLflow tracking + registry backend"),
    "PREFECT_HOME": ("$LOOP_HOME/prefect", "Prefect's home (its SQLite DB when no server is set)"),
    "PREFECT_API_URL": ("unset: ephemeral local API", "a Prefect server, e.g. http://127.0.0.1:4200/api"),
    "PREFECT_API_AUTH_STRING": ("unset", "user:password the Prefect server requires (the production setup's servers do)"),
    "MLFLOW_TRACKING_USERNAME": ("unset", "user the MLflow tracking server requires (the production setup's servers do)"),
    "MLFLOW_TRACKING_PASSWORD": ("unset", "... and that user's password"),
}

# The production setup (compose.yaml, the launch scripts in deploy/, README "Production setup"). The
# first group is what an operator writes into `.env` (git-ignored; `.env.example` lists them); the
# second is what the deploy/ scripts read, set by compose.yaml from the first group, or directly by
# `make test-postgres`. "secret" values come only from the environment, never from the repository.
PRODUCTION = {
    "LOOP_POSTGRES_PASSWORD": ("required, secret", "password of PostgreSQL's superuser (the postgres container)"),
    "LOOP_PREFECT_DB_PASSWORD": ("required, secret", "password of the `prefect` database role (deploy/postgres-init.sh creates it)"),
    "LOOP_MLFLOW_DB_PASSWORD": ("required, secret", "password of the `mlflow` role, owner of the `mlflow` and `mlflow_auth` databases"),
    "LOOP_PREFECT_AUTH_STRING": ("required, secret", "user:password for the Prefect API and UI (server and every client)"),
    "LOOP_MLFLOW_ADMIN_USERNAME": ("required", "MLflow admin created on the first start; the worker and the scoring service sign in as it"),
    "LOOP_MLFLOW_ADMIN_PASSWORD": ("required, secret", "that admin's password (at least 12 characters)"),
    "LOOP_MLFLOW_SECRET_KEY": ("required, secret", "MLflow's Flask secret key (CSRF protection of its user pages)"),
    "LOOP_PUBLISH_ADDRESS": ("127.0.0.1", "host address the Prefect UI, the MLflow UI and the scoring API are published on"),
    "LOOP_PREFECT_PUBLISHED_PORT": ("4200", "host port of the Prefect UI and API"),
    "LOOP_MLFLOW_PUBLISHED_PORT": ("5000", "host port of the MLflow UI and API"),
    "LOOP_API_PUBLISHED_PORT": ("8000", "host port of the scoring API"),
    "LOOP_PREFECT_PUBLIC_URL": ("http://127.0.0.1:4200", "how browsers reach the Prefect UI (its API address is derived)"),
    "LOOP_MLFLOW_ALLOWED_HOSTS": ("mlflow, localhost, 127.0.0.1 with any port", "Host headers MLflow answers (DNS-rebinding guard)"),
    "LOOP_MLFLOW_ARTIFACTS_DESTINATION": ("/data/mlflow-artifacts (a volume)", "artifact store: a folder or s3://bucket/path (needs boto3)"),
    "LOOP_MLFLOW_DEFAULT_PERMISSION": ("NO_PERMISSIONS", "what a signed-in MLflow user may do without a grant (READ, EDIT, MANAGE)"),
    "LOOP_MLFLOW_WORKERS": ("2", "MLflow server worker processes"),
    "LOOP_INBOX_DIR": ("./inbox", "host folder mounted as the worker's inbox (CRM and mail exports)"),
    "LOOP_IMAGE_TAG": ("latest", "tag of the project image compose builds and runs"),
    "AWS_ACCESS_KEY_ID": ("unset", "for an s3:// artifact destination or store: the usual AWS credentials"),
    "AWS_SECRET_ACCESS_KEY": ("unset", "... (secret)"),
    "AWS_DEFAULT_REGION": ("unset", "... and region"),
    "MLFLOW_S3_ENDPOINT_URL": ("unset", "an S3-compatible endpoint (e.g. MinIO) for the artifact destination"),
    # read by deploy/*.sh
    "PREFECT_SERVER_DATABASE_HOST": ("required", "PostgreSQL host of the Prefect server (deploy/prefect-server.sh)"),
    "PREFECT_SERVER_DATABASE_PORT": ("5432", "its port"),
    "PREFECT_SERVER_DATABASE_USER": ("prefect", "its role"),
    "PREFECT_SERVER_DATABASE_NAME": ("prefect", "its database"),
    "PREFECT_SERVER_DATABASE_PASSWORD": ("required, secret", "the role's password"),
    "PREFECT_SERVER_API_AUTH_STRING": ("required, secret", "user:password the Prefect server requires of every API and UI request"),
    "PREFECT_SERVER_API_HOST": ("127.0.0.1", "where the Prefect server listens"),
    "PREFECT_SERVER_API_PORT": ("4200", "its port"),
    "PREFECT_UI_API_URL": ("http://<host>:<port>/api", "the API address as the browser sees it"),
    "MLFLOW_BACKEND_STORE_URI": ("required", "postgresql+psycopg2://mlflow@HOST:PORT/mlflow, no password (deploy/mlflow-server.sh)"),
    "LOOP_MLFLOW_AUTH_DB_URI": ("required", "postgresql+psycopg2://mlflow@HOST:PORT/mlflow_auth: MLflow's users and permissions"),
    "PGPASSWORD": ("required, secret", "the mlflow role's password, read by the PostgreSQL driver (kept out of URIs)"),
    "MLFLOW_ARTIFACTS_DESTINATION": ("required", "where the MLflow server stores artifacts it proxies"),
    "MLFLOW_AUTH_ADMIN_USERNAME": ("required", "MLflow admin created on the first start"),
    "MLFLOW_AUTH_ADMIN_PASSWORD": ("required, secret", "that admin's password"),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": ("required, secret", "MLflow's Flask secret key"),
    "LOOP_MLFLOW_HOST": ("127.0.0.1", "where the MLflow server listens"),
    "LOOP_MLFLOW_PORT": ("5000", "its port"),
    "MLFLOW_SERVER_ALLOWED_HOSTS": ("localhost and private addresses", "Host headers the MLflow server answers"),
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": ("false", "MLflow's job runner (the loop runs its jobs in Prefect)"),
    "MLFLOW_DISABLE_TELEMETRY": ("true", "no usage telemetry from the MLflow server"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": ("false", "no usage telemetry from the Prefect server"),
}

DEMO_PSEUDONYM_KEY = "demo-only-pseudonym-key-change-me"
TASK_RUNNERS = ("threads", "dask")


class SettingsError(RuntimeError):
    """A required setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    home: Path
    store_uri: str
    specs_dir: Path
    inbox: Path
    mlflow_tracking_uri: str
    mlflow_artifact_root: Path
    pseudonym_key_text: str | None = field(repr=False)  # a secret: kept out of reprs, logs and task parameters
    retention_months: int = 24
    vacuum_retention_hours: int = 168
    evidently_workspace: Path | None = None     # None: $LOOP_HOME/evidently
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    evidently_ui_url: str = "http://127.0.0.1:8085"
    task_runner: str = "threads"
    dask_address: str | None = None
    dask_workers: int = 1

    @property
    def pseudonym_key(self) -> bytes:
        """The pseudonymisation secret; refusing to run without one keeps real ids from being hashed with a public key."""
        if not self.pseudonym_key_text:
            raise SettingsError("LOOP_PSEUDONYM_KEY is not set: set it to a long random secret (keep it out of the repo); "
                                "only `loop demo` runs without one, on a fixed demo key")
        return self.pseudonym_key_text.encode()

    def for_workers(self) -> Settings:
        """The settings a task on another process or machine gets: the same places, without the key.

        Work shipped to task-runner workers reads stored rows, which are pseudonymised already;
        only ingest and erasure need the key, and they run in the flow process.
        """
        return replace(self, pseudonym_key_text=None)

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def workspace_dir(self) -> Path:
        return self.evidently_workspace or self.home / "evidently"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("LOOP_HOME", ".loop")).resolve()
        task_runner = env.get("LOOP_TASK_RUNNER", "threads").strip().lower() or "threads"
        if task_runner not in TASK_RUNNERS:
            raise SettingsError(f"LOOP_TASK_RUNNER={task_runner!r}: use one of {', '.join(TASK_RUNNERS)}")
        return cls(
            home=home,
            store_uri=env.get("LOOP_STORE_URI", str(home / "store")),
            specs_dir=Path(env.get("LOOP_SPECS_DIR", str(REPO_ROOT / "data" / "specs"))),
            inbox=Path(env.get("LOOP_INBOX", str(home / "inbox"))),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            mlflow_artifact_root=home / "mlflow" / "artifacts",
            pseudonym_key_text=env.get("LOOP_PSEUDONYM_KEY") or None,
            retention_months=int(env.get("LOOP_RETENTION_MONTHS", "24")),
            vacuum_retention_hours=int(env.get("LOOP_VACUUM_RETENTION_HOURS", "168")),
            evidently_workspace=Path(env["LOOP_EVIDENTLY_WORKSPACE"]) if env.get("LOOP_EVIDENTLY_WORKSPACE") else None,
            mlflow_ui_url=env.get("LOOP_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/"),
            evidently_ui_url=env.get("LOOP_EVIDENTLY_UI_URL", "http://127.0.0.1:8085").rstrip("/"),
            task_runner=task_runner,
            dask_address=env.get("LOOP_DASK_ADDRESS") or None,
            dask_workers=int(env.get("LOOP_DASK_WORKERS") or os.cpu_count() or 1),
        )


def prepare_environment(environ: dict[str, str] | None = None) -> Settings:
    """Fill in the environment that Prefect and MLflow read at import time, then return settings.

    Must run before ``prefect`` is imported: importing it creates ``$PREFECT_HOME``.
    Only defaults are set; a variable the user exported wins.
    """
    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "mlflow").mkdir(exist_ok=True)
    env.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return settings
