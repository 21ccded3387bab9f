"""Daily store maintenance: drop events past retention, compact small files, vacuum old versions; expire
unanswered approval requests past their time-out."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from features.clock import resolve_as_of
from features.maintenance import apply_retention, compact, vacuum
from flows.runtime import Runtime


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def drop_expired(as_of: datetime) -> dict[str, int]:
    runtime = Runtime.from_env()
    return apply_retention(runtime.store, as_of, runtime.settings.retention_months)


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def compact_tables() -> dict:
    return compact(Runtime.from_env().store)


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def vacuum_tables() -> dict[str, int]:
    runtime = Runtime.from_env()
    return vacuum(runtime.store, runtime.settings.vacuum_retention_hours)


@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def expire_overdue_approvals() -> list[tuple[str, str]]:
    """Requests past their spec's time-out expire as rejected, even if their approval run is gone (a restart of
    `loop serve`, a lost process): the waiting run records its own expiry, this makes sure someone does."""
    from models.promotion import expire_overdue

    runtime = Runtime.from_env()
    timeouts = {model: spec.gates.approval_timeout_hours for model, spec in runtime.specs.items()}
    return expire_overdue(runtime.store, runtime.registry, timeouts, datetime.now(UTC))


@flow(name="maintenance")
def maintenance_flow(as_of: datetime | None = None) -> dict:
    """Retention first (its deletes leave files for the vacuum), then compaction, then the vacuum."""
    as_of = resolve_as_of(as_of)
    approvals_expired = expire_overdue_approvals()
    expired = drop_expired(as_of)
    compacted = compact_tables()
    vacuumed = vacuum_tables()
    create_table_artifact(key="store-maintenance", table=[
        {"table": name, "expired_rows": expired.get(name, 0),
         "files_compacted": compacted.get(name, {}).get("files_removed", 0), "files_vacuumed": vacuumed.get(name, 0)}
        for name in sorted(set(expired) | set(compacted) | set(vacuumed))])
    return {"expired": expired, "compacted": compacted, "vacuumed": vacuumed,
            "approvals_expired": [f"{model} v{version}" for model, version in approvals_expired]}
