#!/usr/bin/env python
"""Scale-out benchmark: the weekly cycle retraining several models, with each task runner.

Runnable by anyone from the repository root::

    .venv/bin/python bench/scale.py              # 2 and 4 models at demo size (2,000 leads, 5,000 e-mails a week)
    .venv/bin/python bench/scale.py --quick      # 2 models, 700 leads and 1,300 e-mails a week
    .venv/bin/python bench/scale.py --models 4 --runners threads dask

What it does:

1. simulates ``--weeks`` weeks per model (the cold-start rule decides; outcomes as the company would
   observe them) and ingests them into a store; 4 models are the two specs twice (``lead_scoring_2``,
   ``reply_acceptance_2``: the same spec under another name, data from another seed), as a company with
   one model per segment has;
2. per number of models and runner, on a fresh copy of that store and a fresh MLflow registry, runs
   the real ``self-optimise`` flow twice: week 1 trains every model's first version, week 2 (with the
   next week's files in the inbox) retrains every model against its champion;
   runners: ``threads`` (the default), ``dask`` (a temporary LocalCluster the flow starts and stops),
   ``dask-existing`` (a LocalCluster started before, reached through ``LOOP_DASK_ADDRESS``);
3. reads from the Prefect API where each cycle's time went: monitoring (sub-flows in the flow process),
   the training tasks (on the task runner: their wall span and the sum of their durations), the
   ``retrain`` sub-flows (registration, gates, audit in the flow process);
4. prints a table and writes ``bench/results/scale.json``.

Prefect runs on a temporary local server (``prefect_test_harness``): Dask workers need an API to report to.
The machine's load average is printed: figures from a shared machine vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "scale.json"
BASES = ("lead_scoring", "reply_acceptance")
RUNNERS = ("threads", "dask", "dask-existing")


def model_names(n: int) -> list[str]:
    """The first n models: the two specs, then the same specs under a segment suffix."""
    return [BASES[i % 2] if i < 2 else f"{BASES[i % 2]}_{i // 2 + 1}" for i in range(n)]


def write_specs(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        base = next(b for b in BASES if name == b or name.startswith(f"{b}_"))
        text = (REPO / "data" / "specs" / f"{base}.toml").read_text()
        (folder / f"{name}.toml").write_text(re.sub(rf'^name = "{base}"$', f'name = "{name}"', text, count=1, flags=re.MULTILINE))
    return folder


def simulate(names: list[str], specs: dict, args, key: bytes, folder: Path, first_as_of_week: int):
    """Files for weeks 0..weeks-1 (seen by the first cycle) and for week ``weeks`` plus the outcomes observed
    in between (dropped into the inbox before the second cycle). Returns the two cycles' as-of times."""
    import polars as pl

    from models.policy import Policy
    from simulator.world import World, WorldConfig

    base_specs = {b: specs[b] for b in BASES}
    first, second = folder / "first", folder / "second"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    as_of = None
    for i, name in enumerate(names):
        base = BASES[i % 2]
        world = World(WorldConfig(seed=7 + i // 2, leads_per_week=args.leads, emails_per_week=args.emails), base_specs)
        as_of = world.week_start(first_as_of_week) + timedelta(hours=3)
        later = as_of + timedelta(days=7)
        spec = specs[name]
        for week in range(first_as_of_week + 1):
            population = world.population(base, week)
            entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)
            actions = Policy(spec).decide(entities, key)
            events = world.outcome_events(base, population, actions["decision"], actions["action_id"], actions["decided_at"])
            target = first if week < first_as_of_week else second
            actions.write_parquet(target / f"actions-{name}-{week}.parquet")
            events.filter(pl.col("observed_at") <= as_of).write_parquet(first / f"outcomes-{name}-{week}.parquet")
            events.filter((pl.col("observed_at") > as_of) & (pl.col("observed_at") <= later)).write_parquet(
                second / f"outcomes-{name}-{week}.parquet")
    return as_of, as_of + timedelta(days=7)


def breakdown(flow_run_id) -> dict[str, float]:
    """Where a cycle's time went, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    def seconds(run) -> float:
        return (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else 0.0

    with get_client(sync_client=True) as client:
        cycle = client.read_flow_run(flow_run_id)
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])), limit=200)
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])),
                                      limit=200)
    training = [t for t in tasks if t.name.startswith("train_challenger")]
    starts = [t.start_time for t in training if t.start_time]
    ends = [t.end_time for t in training if t.end_time]
    return {
        "cycle_s": seconds(cycle),
        "monitor_s": sum(seconds(r) for r in subflows if r.name.startswith("monitor-")),
        "training_span_s": (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
        "training_sum_s": sum(seconds(t) for t in training),
        "publish_s": sum(seconds(r) for r in subflows if r.name.startswith("retrain-")),
        "trainings": len(training),
    }


def run_cycles(name: str, work: Path, seed_home: Path, files: Path, specs_dir: Path, runner: str, workers: int,
               as_ofs) -> list[dict]:
    from features.settings import Settings
    from flows.runtime import task_runner
    from flows.self_optimise import self_optimise_flow

    home = work / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(seed_home / "store", home / "store")
    os.environ.update({"LOOP_HOME": str(home), "LOOP_SPECS_DIR": str(specs_dir), "LOOP_INBOX": str(home / "inbox"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                       "LOOP_TASK_RUNNER": "threads" if runner == "threads" else "dask", "LOOP_DASK_WORKERS": str(workers)})
    os.environ.pop("LOOP_DASK_ADDRESS", None)
    cluster = None
    if runner == "dask-existing":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        os.environ["LOOP_DASK_ADDRESS"] = cluster.scheduler_address
    rows = []
    try:
        for cycle, as_of in enumerate(as_ofs, start=1):
            if cycle == 2:
                shutil.copytree(files / "second", home / "inbox", dirs_exist_ok=True)
            flow = self_optimise_flow.with_options(task_runner=task_runner(Settings.from_env()))
            started = time.perf_counter()
            state = flow(as_of=as_of, return_state=True)
            wall = time.perf_counter() - started
            result = state.result()
            row = {"name": name, "runner": runner, "cycle": cycle, "wall_s": wall, **breakdown(state.state_details.flow_run_id),
                   "models": {m: {k: r["retrain"].get(k) for k in ("status", "event", "train_seconds", "trained_on")}
                              for m, r in result["models"].items()}}
            rows.append(row)
            print(f"  {name} cycle {cycle}: {wall:.1f} s  " + "  ".join(
                f"{m}: {v['event'] or v['status']} ({v['train_seconds']} s on {v['trained_on']})"
                for m, v in row["models"].items()), flush=True)
    finally:
        if cluster is not None:
            cluster.close()
            os.environ.pop("LOOP_DASK_ADDRESS", None)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[2, 4], help="numbers of models (default 2 4; at most 8)")
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS, help="task runners to compare")
    parser.add_argument("--leads", type=int, default=2000, help="leads per simulated week (default 2,000)")
    parser.add_argument("--emails", type=int, default=5000, help="e-mails per simulated week (default 5,000)")
    parser.add_argument("--weeks", type=int, default=6, help="simulated weeks before the first cycle (default 6)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Dask worker processes (default: cores)")
    parser.add_argument("--quick", action="store_true", help="2 models, 700 leads and 1,300 e-mails a week, 7 weeks")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON figures (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.leads, args.emails, args.weeks = [2], 700, 1300, 7
    if max(args.models) > 8:
        parser.error("--models: at most 8")

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # Before prefect is imported: its home and DB in the work folder.
    os.environ.update({"PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "LOOP_HOME": str(work / "seed"), "LOOP_PSEUDONYM_KEY": "bench-only-pseudonym-key",
                       "PREFECT_LOGGING_LEVEL": "WARNING"})
    os.environ.pop("PREFECT_API_URL", None)
    from features.settings import prepare_environment

    prepare_environment()
    from prefect.testing.utilities import prefect_test_harness

    from features.clock import SimulatedClock
    from features.ingest import ingest_paths
    from features.spec import load_specs
    from features.store import EventStore

    load = os.getloadavg()
    rows: list[dict] = []
    try:
        names = model_names(max(args.models))
        specs_all = load_specs(write_specs(work / "specs-all", names))
        started = time.perf_counter()
        as_ofs = simulate(names, specs_all, args, b"bench-only-pseudonym-key", work / "files", args.weeks)
        store = EventStore(str(work / "seed" / "store"), specs_all)
        ingest_paths(sorted((work / "files" / "first").iterdir()), store, SimulatedClock(as_ofs[0]), b"bench-only-pseudonym-key")
        print(f"simulated and ingested {args.weeks} weeks of {len(names)} models in {time.perf_counter() - started:.1f} s",
              flush=True)
        with prefect_test_harness(server_startup_timeout=120):
            for n in args.models:
                specs_dir = write_specs(work / f"specs-{n}", model_names(n))
                for runner in args.runners:
                    rows += run_cycles(f"{n}-models-{runner}", work, work / "seed", work / "files", specs_dir, runner,
                                       args.workers, as_ofs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"weekly cycle, {args.leads:,} leads and {args.emails:,} e-mails a week per model, {args.weeks} weeks of history; "
          f"{os.cpu_count()} cores, {args.workers} Dask workers; load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"{'models':>6s} {'runner':14s} {'cycle':>5s} {'wall s':>7s} {'monitor s':>9s} {'train span s':>12s} "
          f"{'train sum s':>11s} {'publish s':>9s}")
    for r in rows:
        n = len(r["models"])
        print(f"{n:6d} {r['runner']:14s} {r['cycle']:5d} {r['wall_s']:7.1f} {r['monitor_s']:9.1f} {r['training_span_s']:12.1f} "
              f"{r['training_sum_s']:11.1f} {r['publish_s']:9.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load[0],
                    "load_after": os.getloadavg()[0]},
        "runs": rows}, indent=2, default=str))
    print(f"figures in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
