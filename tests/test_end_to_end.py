"""A few simulated weeks through the real loop: Prefect flow runs, MLflow runs and registry,
Evidently reports, Delta tables. Slow (about a minute); `make test-fast` skips it."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from features.clock import iso_week
from features.weeks import week_status
from flows.cli import app
from flows.demo import CYCLE_DELAY, DemoConfig, run_demo
from flows.runtime import Runtime
from models.promotion import ApprovalError, AuditTrail, approve, rollback
from models.support import RULE_THRESHOLD
from simulator.world import NEW_RETURN_TEMPLATE, World, WorldConfig

CONFIG = DemoConfig(weeks=5, seed=11, leads_per_week=400, emails_per_week=5000, frozen_week=2,
                    lead_drift_week=3, reply_drift_week=3)


async def _flow_run_names() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs(limit=200)
    return [run.name for run in runs if run.state and run.state.is_completed()]


@pytest.mark.slow
def test_simulated_weeks_run_the_whole_loop(loop_home, prefect_harness, specs):
    table = run_demo(CONFIG)
    runtime = Runtime.from_env()
    model = "reply_acceptance"

    # The scoreboard has a row per week, model and policy.
    assert table.height == CONFIG.weeks * 2 * 3
    assert set(table["policy"]) == {"loop", "frozen", "oracle"}

    # A champion exists, and the alias moved: gates passed (promoted) or a person approved a large change (approved).
    champion = runtime.registry.version_by_alias(model, "champion")
    assert champion is not None and float(champion.tags["threshold"]) > 0
    world = World(WorldConfig(seed=CONFIG.seed), specs)
    audit = runtime.store.scan_audit().collect()
    moves = audit.filter((pl.col("model") == model) & pl.col("event").is_in(["promoted", "approved"]))
    assert moves.height >= 2
    assert str(champion.version) == moves.sort("at")["version"][-1]

    # After the scheduled drift, drafts from the new template, which the champion of the day never saw, went
    # to a person by the cold-start rule (score 0/1 at threshold 0.5) instead of the champion's extrapolation.
    new_template = runtime.store.scan_actions(model).filter(pl.col("template_id") == NEW_RETURN_TEMPLATE).collect()
    ruled = new_template.filter(pl.col("threshold") == RULE_THRESHOLD)
    assert new_template.height and ruled.height, new_template.group_by("model_version", "threshold").len()
    assert (ruled["decision"] == specs[model].negative_decision).all()
    assert set(ruled["model_version"]) <= set(moves["version"])       # decided under a champion, by the rule

    # Prefect recorded the weekly cycles and their sub-flows.
    names = asyncio.run(_flow_run_names())
    first_cycle = iso_week(world.week_start(1) + CYCLE_DELAY)
    assert f"self-optimise-{first_cycle}" in names
    assert any(n.startswith(f"retrain-{model}-") for n in names)
    assert sum(n.startswith(f"monitor-{model}-") for n in names) == CONFIG.weeks

    # MLflow holds training runs with lineage and monitoring runs with the Evidently report.
    import mlflow

    runs = mlflow.search_runs(experiment_names=[f"{model}/training"], output_format="list")
    assert runs and all(r.data.params["spec_hash"] == specs[model].content_hash for r in runs)
    assert {"test_roc_auc", "test_calibration_error", "threshold"} <= set(runs[0].data.metrics)
    client = mlflow.MlflowClient()
    monitoring = mlflow.search_runs(experiment_names=[f"{model}/monitoring"], output_format="list")
    assert monitoring
    reports = [a.path for a in client.list_artifacts(monitoring[0].info.run_id, "reports")]
    assert any(p.endswith(".html") for p in reports)
    lineage_file = client.download_artifacts(runs[0].info.run_id, "lineage.json", str(loop_home))
    lineage = json.loads(open(lineage_file, encoding="utf-8").read())
    assert lineage["rows"] > 0 and lineage["spec_hash"] == specs[model].content_hash

    # No raw identifier reaches the store: the simulator's ids look like '...@mail.example'.
    stored_ids = runtime.store.scan_actions(model).select("entity_id").collect()["entity_id"]
    assert stored_ids.str.starts_with("pid_").all() and not stored_ids.str.contains("@").any()

    # Prefect may start a week's cycle twice: the second start finds the week done and changes nothing.
    from flows.self_optimise import self_optimise_flow

    versions_before = len(runtime.registry.versions(model))
    audit_before = runtime.store.scan_audit().collect().height
    last_cycle = world.week_start(CONFIG.weeks) + CYCLE_DELAY
    again = self_optimise_flow(as_of=last_cycle)
    for name, result in again["models"].items():
        ended = week_status(runtime.store, name, iso_week(last_cycle))
        assert ended in ("done", "awaiting_approval") and result["retrain"]["status"] == f"week_already_{ended}"
    assert len(runtime.registry.versions(model)) == versions_before
    assert runtime.store.scan_audit().collect().height == audit_before

    # `loop status --json` reports the same champion.
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"][model]["champion"]["version"] == champion.version

    # Rollback restores the previous champion and is audited; approving a version nobody waits for is refused.
    audit_trail = AuditTrail(runtime.store, runtime.registry, world.week_start(CONFIG.weeks) + timedelta(days=1))
    restored = rollback(model, "tester", "test rollback", runtime.registry, audit_trail)
    assert restored == champion.tags["previous_champion"]
    assert str(runtime.registry.version_by_alias(model, "champion").version) == restored
    assert runtime.store.scan_audit().filter(pl.col("event") == "rolled_back").collect()["actor"].to_list() == ["tester"]
    with pytest.raises(ApprovalError, match="not waiting for approval"):
        approve(model, champion.version, "tester", "", runtime.registry, audit_trail)
