"""Scale-out: the weekly cycle trains many models side by side on the task runner `LOOP_TASK_RUNNER` names.

The Dask test starts a real `distributed.LocalCluster` (worker processes on 127.0.0.1), points the
loop at it with `LOOP_DASK_ADDRESS` and runs the real `self-optimise` flow through Prefect's
`DaskTaskRunner` on the session's Prefect harness, with MLflow on SQLite and the Delta store on disk.
"""

from __future__ import annotations

import os
from datetime import timedelta

import polars as pl
import pytest

from features.clock import SimulatedClock, iso_week
from features.ingest import ingest_paths
from features.settings import Settings, SettingsError
from features.weeks import week_status
from flows.runtime import Runtime, task_runner
from models.policy import Policy
from simulator.world import MODELS, World, WorldConfig

# Enough mature labels for both models' first training (lead labels need up to 30 days or a terminal outcome).
WORLD = WorldConfig(seed=21, leads_per_week=700, emails_per_week=1300)
WEEKS = 7


def _seed_store(runtime: Runtime, folder) -> object:
    """WEEKS simulated weeks of both models decided by the cold-start rule, ingested as the CRM would deliver them."""
    world = World(WORLD, runtime.specs)
    as_of = world.week_start(WEEKS) + timedelta(hours=3)
    key, files = runtime.settings.pseudonym_key, []
    for model in MODELS:
        spec = runtime.spec(model)
        for week in range(WEEKS):
            population = world.population(model, week)
            entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)
            actions = Policy(spec).decide(entities, key)
            events = world.outcome_events(model, population, actions["decision"], actions["action_id"], actions["decided_at"])
            files += [folder / f"actions-{model}-{week}.parquet", folder / f"outcomes-{model}-{week}.parquet"]
            actions.write_parquet(files[-2])
            events.filter(pl.col("observed_at") <= as_of).write_parquet(files[-1])
    ingest_paths(files, runtime.store, SimulatedClock(as_of), key)
    return as_of


def test_the_setting_picks_threads_or_a_dask_cluster_and_workers_get_no_key():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    base = {"LOOP_HOME": "/tmp/loop-settings-test", "LOOP_PSEUDONYM_KEY": "secret-key-text"}
    threads = Settings.from_env(base)
    assert threads.task_runner == "threads" and isinstance(task_runner(threads), ThreadPoolTaskRunner)

    local = Settings.from_env(base | {"LOOP_TASK_RUNNER": "dask", "LOOP_DASK_WORKERS": "3"})
    runner = task_runner(local)
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_kwargs | {"n_workers": 3, "processes": True, "host": "127.0.0.1"} == runner.cluster_kwargs
    assert runner._client is None  # nothing started: the cluster comes up with the first submitted task

    remote = task_runner(Settings.from_env(base | {"LOOP_TASK_RUNNER": "Dask", "LOOP_DASK_ADDRESS": "tcp://10.1.2.3:8786"}))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.1.2.3:8786" and remote.cluster_kwargs == {}

    with pytest.raises(SettingsError, match="LOOP_TASK_RUNNER"):
        Settings.from_env(base | {"LOOP_TASK_RUNNER": "ray"})
    # Dask workers report their task runs to the Prefect API: the flow process's ephemeral one is out of their reach.
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(SettingsError, match="PREFECT_API_URL"):
        with runner:
            pass

    # What travels to workers: the same places, never the pseudonymisation key (nor in a repr or log line).
    shipped = local.for_workers()
    assert shipped.store_uri == local.store_uri and shipped.mlflow_tracking_uri == local.mlflow_tracking_uri
    assert shipped.pseudonym_key_text is None and local.pseudonym_key == b"secret-key-text"
    assert "secret-key-text" not in repr(local)


def test_one_failing_model_fails_the_cycle_after_the_others_finished(loop_home, prefect_harness):
    from flows.self_optimise import self_optimise_flow

    runtime = Runtime.from_env()
    as_of = World(WORLD, runtime.specs).week_start(1) + timedelta(hours=3)
    with pytest.raises(KeyError, match="no_such_model"):
        self_optimise_flow(as_of=as_of, models=["no_such_model", "lead_scoring"])
    week = iso_week(as_of)
    # The failure is recorded for its week (a later run may retry it); the other model's week ran to its end.
    assert week_status(runtime.store, "no_such_model", week) == "failed"
    assert week_status(runtime.store, "lead_scoring", week) == "done"
    audit = runtime.store.scan_audit().collect()
    assert audit.filter(pl.col("model") == "lead_scoring")["event"].to_list() == ["not_trained"]


@pytest.mark.slow
def test_two_models_retrain_side_by_side_on_dask_workers(loop_home, prefect_harness, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster, get_task_stream

    from flows.self_optimise import self_optimise_flow

    runtime = Runtime.from_env()
    as_of = _seed_store(runtime, tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        workers = set(cluster.scheduler_info["workers"])
        worker_pids = set(client.run(os.getpid).values())
        monkeypatch.setenv("LOOP_TASK_RUNNER", "dask")
        monkeypatch.setenv("LOOP_DASK_ADDRESS", cluster.scheduler_address)
        runner = task_runner(Settings.from_env())
        with get_task_stream(client=client) as stream:
            result = self_optimise_flow.with_options(task_runner=runner)(as_of=as_of)

    assert os.getpid() not in worker_pids and len(workers) == 2
    week = iso_week(as_of)
    for model in MODELS:
        retrain = result["models"][model]["retrain"]
        assert retrain["status"] == "trained", retrain
        # The heavy half ran on a Dask worker; registry, gates and audit ran in this (the flow) process.
        assert retrain["trained_on"].removeprefix("dask worker ") in workers
        assert runtime.registry.get_version(model, retrain["version"]) is not None
        version = runtime.registry.get_version(model, retrain["version"])
        assert version.description.startswith(f"# Model card: {model} version {retrain['version']}")
        assert week_status(runtime.store, model, week) == "done"
    # The cluster's own record: one training task per model, each run by one of its workers, and nothing else.
    tasks = [(str(t["key"]), t["worker"]) for t in stream.data]
    assert len(tasks) == len(MODELS) and all("train_challenger" in key and worker in workers for key, worker in tasks), tasks
    audit = runtime.store.scan_audit().collect()
    assert set(audit["model"]) == set(MODELS)
