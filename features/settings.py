"""Runtime settings, read from environment variables with documented defaults.

Everything the loop writes lives under one folder (``LOOP_HOME``, default ``./.loop``) unless a
variable points a part elsewhere (a Prefect server, an MLflow tracking server, object storage).
Settings are read once into an immutable object and passed down; nothing here is global state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (default description, meaning): every setting in one place; README's settings table uses the same words.
DOCUMENTED = {
    "LOOP_HOME": ("./.loop", "folder for all runtime state (store, MLflow, Prefect, reports, demo output)"),
    "LOOP_STORE_URI": ("$LOOP_HOME/store", "where the Delta tables live (a path; object-store URIs later)"),
    "LOOP_SPECS_DIR": ("data/specs", "folder of model specs (one TOML file per model)"),
    "LOOP_INBOX": ("$LOOP_HOME/inbox", "folder the scheduled ingest picks files up from"),
    "LOOP_PSEUDONYM_KEY": ("none: required, except for `loop demo`", "secret key for pseudonymising lead/customer ids"),
    "LOOP_ALERT_WEBHOOK_URL": ("unset: no alerts", "webhook that drift alarms, pending approvals, rollbacks and failed runs are sent to"),
    "LOOP_RETENTION_MONTHS": ("24", "events older than this are dropped by the daily maintenance"),
    "LOOP_VACUUM_RETENTION_HOURS": ("168", "old Delta versions are vacuumed after this many hours"),
    "LOOP_INGEST_BATCH_ROWS": ("200000", "rows per batch when reading a file (memory vs speed)"),
    "LOOP_API_WAL": ("$LOOP_HOME/api-wal", "the scoring service's write-ahead log (one folder per service process)"),
    "LOOP_API_TOKEN": ("unset: no auth on 127.0.0.1", "bearer token the scoring API requires; needed to bind elsewhere"),
    "LOOP_API_FLUSH_SECONDS": ("10", "the scoring service moves its log into the store at least this often"),
    "LOOP_API_FLUSH_ROWS": ("50000", "... or as soon as this many rows wait in the log"),
    "LOOP_API_RELOAD_SECONDS": ("30", "how often the scoring service checks whether the champion alias moved"),
    "MLFLOW_TRACKING_URI": ("sqlite:///$LOOP_HOME/mlflow/mlflow.db", "MLflow tracking + registry backend"),
    "PREFECT_HOME": ("$LOOP_HOME/prefect", "Prefect's home (its SQLite DB when no server is set)"),
    "PREFECT_API_URL": ("unset: ephemeral local API", "a Prefect server, e.g. http://127.0.0.1:4200/api"),
}

DEMO_PSEUDONYM_KEY = "demo-only-pseudonym-key-change-me"


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
    pseudonym_key_text: str | None
    retention_months: int = 24
    vacuum_retention_hours: int = 168

    @property
    def pseudonym_key(self) -> bytes:
        """The pseudonymisation secret; refusing to run without one keeps real ids from being hashed with a public key."""
        if not self.pseudonym_key_text:
            raise SettingsError("LOOP_PSEUDONYM_KEY is not set: set it to a long random secret (keep it out of the repo); "
                                "only `loop demo` runs without one, on a fixed demo key")
        return self.pseudonym_key_text.encode()

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("LOOP_HOME", ".loop")).resolve()
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
