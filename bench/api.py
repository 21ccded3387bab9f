#!/usr/bin/env python
"""Scoring API benchmark: a load generator on loopback against a real `loop api` process.

Runnable by anyone from the repository root::

    .venv/bin/python bench/api.py              # ~1 min: 200 single decisions/s for 30 s, then batches of 1,000 for 20 s
    .venv/bin/python bench/api.py --quick      # ~25 s: shorter phases

What it does:

1. makes a fresh state folder and registers a lead-scoring champion fitted on simulated leads, so
   every decision runs the real pipeline (one-hot + gradient boosting + calibration), not the
   cold-start rule;
2. starts ``loop api`` (uvicorn, one process) on a free loopback port with its default flush
   interval, so the write-ahead log's fsync and the batches into Delta run during the measurement;
3. **single**: sends one-entity decide requests on a fixed schedule (open loop, ``--rate`` per
   second). Latency is measured from the moment a request was *due*, not when it was sent, so a
   stalled server cannot hide its queue (no coordinated omission);
4. **batched**: ``--concurrency`` clients send 1,000-entity requests in the columnar form back to
   back (closed loop) and count decisions per second;
5. stops the service (it flushes its log) and checks that the store holds exactly the actions
   whose ids the clients were given;
6. prints a table and writes the figures to ``bench/results/api.json``.

Targets (issue 5): p99 under 25 ms for a single decision at 200 requests/s, and at least 50,000
decisions/s in batches of 1,000, on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import polars as pl  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api.json"
KEY = "bench-api-key"
MODEL = "lead_scoring"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(home: Path) -> dict[str, str]:
    return dict(os.environ, LOOP_HOME=str(home), LOOP_PSEUDONYM_KEY=KEY,
                MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")


def register_champion(home: Path) -> tuple[str, pl.DataFrame]:
    """Fit and register a lead model; returns its version and a pool of simulated leads to send."""
    os.environ.update(_environment(home))
    from features.training_set import Split
    from flows.runtime import Runtime
    from models.registry import CHAMPION
    from models.train import fit_model
    from simulator.world import World, WorldConfig

    runtime = Runtime.from_env()
    spec = runtime.spec(MODEL)
    world = World(WorldConfig(seed=11, leads_per_week=4000), runtime.specs)
    frames = []
    for week in range(4):
        population = world.population(MODEL, week)
        rng = np.random.default_rng(week)
        logit = (population["pages_visited"].to_numpy() - 5) / 3 + 1.5 * population["requested_demo"].to_numpy() - 1
        label = rng.random(population.height) < 1 / (1 + np.exp(-logit))
        meeting = rng.random(population.height) < 0.5   # the lead model is decision-aware: both decisions logged
        frames.append(population.with_columns(label=pl.Series(label.astype(np.int8)), week=pl.lit(f"2026-W0{week + 1}"),
                                              decision=pl.Series(np.where(meeting, "propose_meeting", "nurture"))))
    trained = fit_model(Split(fit=pl.concat(frames[:2]), calibration=frames[2], test=frames[3]), spec)
    _, version = runtime.registry.log_training(spec, trained, lineage={"as_of": "2026-01-26T00:00:00+00:00"},
                                               input_example=frames[0].head(5), week="2026-W04", plots={},
                                               run_name="bench-api")
    runtime.registry.set_alias(MODEL, CHAMPION, version)
    pool = pl.concat(frames).select("entity_ref", *spec.feature_names)
    return version, pool


def start_service(home: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "api", "--port", str(port)], env=_environment(home),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("`loop api` did not become ready within 120 s")


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max())}


async def single_phase(url: str, bodies: list[bytes], rate: float, seconds: float) -> tuple[dict, list[str]]:
    """Open loop: request i is due at start + i / rate; its latency counts from then."""
    total = int(rate * seconds)
    latencies: list[float] = []
    ids: list[str] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"content-type": "application/json"}) as client:
        # Begin a second from now: creating the request tasks takes time, which must not count as latency.
        start = time.perf_counter() + 1.0

        async def one(i: int) -> None:
            nonlocal errors
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            response = await client.post(f"/v1/{MODEL}/decide", content=bodies[i % len(bodies)])
            latencies.append((time.perf_counter() - due) * 1000)
            if response.status_code == 200:
                ids.append(orjson.loads(response.content)["decisions"][0]["action_id"])
            else:
                errors += 1

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    return {"requests": total, "errors": errors, "offered_per_s": rate, "achieved_per_s": total / elapsed,
            **_percentiles(latencies)}, ids


async def batch_phase(url: str, bodies: list[bytes], batch: int, concurrency: int, seconds: float) -> tuple[dict, list[str]]:
    """Closed loop: each client sends its next batch as soon as the previous one is answered."""
    latencies: list[float] = []
    ids: list[str] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"content-type": "application/json"}) as client:
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                response = await client.post(f"/v1/{MODEL}/decide", content=bodies[i % len(bodies)])
                latencies.append((time.perf_counter() - sent) * 1000)
                if response.status_code == 200:
                    ids.extend(orjson.loads(response.content)["columns"]["action_id"])
                else:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors, "batch": batch, "concurrency": concurrency,
            "decisions_per_s": len(ids) / elapsed, **_percentiles(latencies)}, ids


def _bodies(pool: pl.DataFrame, size: int, count: int) -> list[bytes]:
    bodies = []
    for i in range(count):
        part = pool.slice((i * size) % max(pool.height - size, 1), size)
        if size == 1:
            bodies.append(orjson.dumps({"entities": part.to_dicts()}))
        else:
            bodies.append(orjson.dumps({"columns": part.to_dict(as_series=False)}))
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="single decisions per second (open loop)")
    parser.add_argument("--single-seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=1000, help="entities per batched request")
    parser.add_argument("--concurrency", type=int, default=2, help="batched clients in parallel")
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="10 s phases")
    parser.add_argument("--workdir", type=Path, help="state folder to use (default: a temporary one, removed after)")
    args = parser.parse_args()
    if args.quick:
        args.single_seconds = args.batch_seconds = 10.0

    home = args.workdir or Path(tempfile.mkdtemp(prefix="bench-api-"))
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    print(f"state folder {home}; registering a champion ...", flush=True)
    version, pool = register_champion(home / "loop")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(home / "loop", port)
    try:
        singles = _bodies(pool, 1, 2000)
        batches = _bodies(pool, args.batch, 40)
        asyncio.run(single_phase(url, singles, 50, 2))                     # warm-up: imports, first predictions
        print(f"single: {args.rate:.0f} requests/s for {args.single_seconds:.0f} s ...", flush=True)
        single, single_ids = asyncio.run(single_phase(url, singles, args.rate, args.single_seconds))
        print(f"batched: {args.concurrency} clients x {args.batch} entities for {args.batch_seconds:.0f} s ...", flush=True)
        batched, batch_ids = asyncio.run(batch_phase(url, batches, args.batch, args.concurrency, args.batch_seconds))
    finally:
        process.send_signal(signal.SIGTERM)        # a graceful stop flushes the log into the store
        process.wait(timeout=300)

    os.environ.update(_environment(home / "loop"))
    from flows.runtime import Runtime

    stored = set(Runtime.from_env().store.scan_actions(MODEL).select("action_id").collect().get_column("action_id"))
    answered = set(single_ids) | set(batch_ids)
    results = {
        "champion_version": version,
        **{f"single_{k}": round(v, 3) if isinstance(v, float) else v for k, v in single.items()},
        **{f"batch_{k}": round(v, 3) if isinstance(v, float) else v for k, v in batched.items()},
        "answered_actions": len(answered), "stored_answered_actions": len(answered & stored),
        "machine_cpus": os.cpu_count(), "machine_python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{'phase':<28}{'throughput':>18}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    print(f"{'single, open loop':<28}{single['achieved_per_s']:>12.0f} req/s{single['p50_ms']:>9.1f}"
          f"{single['p99_ms']:>9.1f}{single['max_ms']:>9.1f}{single['errors']:>8}")
    print(f"{f'batches of {args.batch}, closed loop':<28}{batched['decisions_per_s']:>10.0f} dec./s{batched['p50_ms']:>9.1f}"
          f"{batched['p99_ms']:>9.1f}{batched['max_ms']:>9.1f}{batched['errors']:>8}")
    print(f"answered {len(answered):,} action ids; stored after the service stopped: {len(answered & stored):,}")
    print(f"targets: single p99 < 25 ms at 200/s -> {'met' if single['p99_ms'] < 25 else 'NOT met'}; "
          f"batches >= 50,000 decisions/s -> {'met' if batched['decisions_per_s'] >= 50_000 else 'NOT met'}")
    print(f"figures written to {RESULTS.relative_to(REPO)}")
    if not args.workdir:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
