"""The scoring service's core, without HTTP: decide, record outcomes, flush the log, follow the champion.

Decisions come from each model's champion and its registered threshold (the spec's cold-start
rule before a champion exists). Every decision and outcome goes to the write-ahead log before
the caller hears of it; a flusher moves sealed log segments into the Delta store through the
same atomic, idempotent ingest that files take. A watcher polls the registry and swaps in a new
champion when the alias moves, so a promotion needs no restart; with it, the segments held in safe
mode (features/safe_mode.py), so a flag or a `loop clear` reaches the decisions within the same period.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from features.clock import Clock, SystemClock
from features.contract import OUTCOME_SCHEMA, UTC_TIME
from features.ingest import ingest_batches
from features.settings import Settings
from features.spec import ModelSpec
from features.store import EventStore
from models.policy import Policy
from models.safe_decisions import SafeMode
from service.priority import lower_priority
from service.wal import ACTIONS, OUTCOMES, WriteAheadLog, read_segment

log = logging.getLogger("loop.api")

@dataclass(frozen=True)
class ServiceSettings:
    wal_dir: Path
    token: str | None = None
    flush_seconds: float = 10.0
    flush_rows: int = 50_000
    reload_seconds: float = 30.0

    @classmethod
    def from_env(cls, settings: Settings, environ: dict[str, str] | None = None) -> "ServiceSettings":
        env = os.environ if environ is None else environ
        return cls(wal_dir=Path(env.get("LOOP_API_WAL", str(settings.home / "api-wal"))),
                   token=env.get("LOOP_API_TOKEN") or None,
                   flush_seconds=float(env.get("LOOP_API_FLUSH_SECONDS", "10")),
                   flush_rows=int(env.get("LOOP_API_FLUSH_ROWS", "50000")),
                   reload_seconds=float(env.get("LOOP_API_RELOAD_SECONDS", "30")))


@dataclass
class Health:
    started: bool = False
    last_flush_at: datetime | None = None
    last_flush_error: str | None = None
    last_reload_error: str | None = None
    flushed_rows: int = 0
    replayed_rows: int = 0
    torn_bytes: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    safe_mode: dict[str, list[str]] = field(default_factory=dict)


def new_action_ids(model: str, decided_at: datetime, count: int) -> pl.Series:
    """Unique ids: the model, the decision's microsecond and 64 random bits, vectorised."""
    random = pl.Series(np.frombuffer(os.urandom(8 * count), dtype=np.uint64))
    stamp = int(decided_at.timestamp() * 1_000_000)
    return pl.select(pl.format("{}-{}-{}", pl.lit(model[:4]), pl.lit(stamp), pl.lit(random).cast(pl.String))).to_series()


class ScoringService:
    def __init__(self, specs: dict[str, ModelSpec], store: EventStore, registry, key: bytes,
                 config: ServiceSettings, clock: Clock | None = None) -> None:
        self.specs, self.store, self.registry, self.key, self.config = specs, store, registry, key, config
        self.clock = clock or SystemClock()
        self.wal = WriteAheadLog(config.wal_dir)
        self.policies: dict[str, Policy] = {name: Policy(spec) for name, spec in specs.items()}
        self.health = Health(versions={name: p.version for name, p in self.policies.items()})
        self._flush_lock = threading.Lock()
        self._flush_wanted = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ProcessPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        """Replay what a previous process left in the log, load the champions, then start the helpers."""
        # Start the flusher process now: its start-up (imports) costs a second of CPU that should not
        # land in the middle of serving.
        self._flusher().submit(warm_up).result()
        self.health.replayed_rows = self.flush()
        self.reload_champions()
        # One thread per prediction: concurrency comes from requests (micro-batched), and OpenMP's
        # spinning worker threads made one-row predictions 10x slower on a busy 2-core machine.
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        self.health.started = True
        if background:
            for target, name in ((self._flush_loop, "wal-flusher"), (self._reload_loop, "champion-watcher")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._flush_wanted.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.wal.close()

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._flush_wanted.wait(timeout=self.config.flush_seconds)
            self._flush_wanted.clear()
            if not self._stop.is_set():
                self.flush()

    def _reload_loop(self) -> None:
        while not self._stop.wait(timeout=self.config.reload_seconds):
            self.reload_champions()

    # -- champions -------------------------------------------------------------------------
    def reload_champions(self) -> dict[str, str]:
        """Load a model's champion when its alias points elsewhere than what is served, and the segments
        held in safe mode when they changed; returns the versions that changed."""
        from features.safe_mode import active
        from models.registry import CHAMPION

        changed = {}
        try:
            for name, spec in self.specs.items():
                version = self.registry.version_by_alias(name, CHAMPION)
                safe = SafeMode.from_frame(active(self.store, name))
                current = self.policies[name]
                served = current.version
                wanted = str(version.version) if version is not None else Policy(spec).version
                if wanted != served:
                    model = self.registry.load(name, wanted) if version is not None else None
                    self.policies = {**self.policies, name: Policy(spec, model, safe)}   # swapped whole: requests see old or new
                    changed[name] = wanted
                    log.warning("serving %s version %s (was %s)", name, wanted, served)
                elif safe != current.safe_mode:
                    self.policies = {**self.policies, name: dataclasses.replace(current, safe_mode=safe)}
                    log.warning("%s segments in safe mode: %s", name, ", ".join(safe.keys) or "none")
            self.health.last_reload_error = None
        except Exception as exc:  # noqa: BLE001 - keep serving the loaded champion; readyz reports the error
            self.health.last_reload_error = f"{type(exc).__name__}: {exc}"
            log.error("could not check the champions: %s", self.health.last_reload_error)
        self.health.versions = {name: p.version for name, p in self.policies.items()}
        self.health.safe_mode = {name: p.safe_mode.keys for name, p in self.policies.items()}
        return changed

    # -- requests ------------------------------------------------------------------------------
    def decide(self, model: str, entities: pl.DataFrame) -> pl.DataFrame:
        """Score ``entities`` (``entity_ref`` + the spec's features), log the actions durably, return them."""
        policy = self.policies[model]
        now = self.clock.now()
        frame = entities.with_columns(pl.lit(now).cast(UTC_TIME).alias("decided_at"))
        actions = policy.decide(frame, self.key, new_action_ids(model, now, frame.height))
        self._log(ACTIONS, actions)
        return actions

    def record_outcomes(self, outcomes: pl.DataFrame) -> int:
        columns = [pl.col(c) if c in outcomes.columns else pl.lit(None).alias(c) for c in (*OUTCOME_SCHEMA, "model")]
        self._log(OUTCOMES, outcomes.select(columns).cast({**OUTCOME_SCHEMA, "model": pl.String}))
        return outcomes.height

    def _log(self, kind: bytes, rows: pl.DataFrame) -> None:
        self.wal.append(kind, rows)
        if self.wal.pending_rows >= self.config.flush_rows:
            self._flush_wanted.set()

    # -- log -> store --------------------------------------------------------------------------
    def flush(self) -> int:
        """Move every sealed log segment into the store, one atomic ingest per segment; returns rows moved.

        The ingest runs in a child process of its own: its Python work (validation, the duplicate
        check) would otherwise hold the GIL in the serving process, and requests answered during a
        flush took 30 ms instead of 10 at the 99th percentile. A segment is removed only after its
        ingest is complete; if anything dies in between, the next flush ingests it again and the
        store keeps one copy of each row.
        """
        moved = 0
        with self._flush_lock:
            try:
                for path in self.wal.seal():
                    result = self._flusher().submit(ingest_segment, str(path), self.store.uri, self.specs,
                                                    self.key).result()
                    if result["failed"]:
                        raise RuntimeError(result["failed"])
                    if result["quarantined"]:
                        log.error("%d rows of %s were quarantined (see `loop quarantine`)", result["quarantined"], path.name)
                    self.health.torn_bytes += result["torn_bytes"]
                    self.wal.remove(path)
                    moved += result["rows"]
                self.health.last_flush_error = None
            except Exception as exc:  # noqa: BLE001 - segments stay on disk; the next flush retries them
                if isinstance(exc, BrokenProcessPool):
                    self._pool = None
                self.health.last_flush_error = f"{type(exc).__name__}: {exc}"
                log.error("flushing the write-ahead log failed (will retry): %s", self.health.last_flush_error)
            self.health.last_flush_at = self.clock.now()
            self.health.flushed_rows += moved
        return moved

    def _flusher(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=lower_priority)
        return self._pool


def warm_up() -> None:
    """Import what ingesting needs, in the flusher process."""
    import deltalake  # noqa: F401

    import features.ingest  # noqa: F401


def ingest_segment(path: str, store_uri: str, specs: dict[str, ModelSpec], key: bytes) -> dict:
    """One sealed log segment into the store as one atomic, idempotent ingest (runs in the flusher process)."""
    segment = read_segment(Path(path))
    if not segment.rows:
        return {"rows": 0, "torn_bytes": segment.torn_bytes, "quarantined": 0, "failed": None}
    batches: list[pl.DataFrame] = []
    if segment.actions:
        actions = pl.concat(segment.actions, how="diagonal_relaxed")
        batches += [rows for _, rows in actions.group_by("model", maintain_order=True)]
    if segment.outcomes:
        batches.append(pl.concat(segment.outcomes, how="diagonal_relaxed"))
    numbered, first = [], 1
    for rows in batches:
        numbered.append((rows, first))
        first += rows.height
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    store = EventStore(store_uri, specs)
    with store.writer():
        report = ingest_batches(numbered, f"api-wal:{Path(path).name}", digest, store, SystemClock(), key)
    return {"rows": segment.rows, "torn_bytes": segment.torn_bytes, "quarantined": report.quarantined,
            "failed": report.failed_files[0][1] if report.failed_files else None}
