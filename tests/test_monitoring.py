"""Monitoring people look at: the weekly cycle's summary (rendered without Prefect), and after simulated
weeks the KPI history in a real MLflow (SQLite), the Evidently workspace's snapshots and the Prefect
artifacts read back from the test harness."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from features.clock import BERLIN
from models.report import cycle_summary

MLFLOW_RUN = re.compile(r"\(http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/([0-9a-f]{32})\)")


def _drift(**overrides) -> dict:
    return {"status": "checked", "drift_detected": True, "champion_version": "3", "drifted_columns": "template_id",
            "drifted_share": 1 / 6, "score_drifted": False, "score_distance": 0.04, "outcome_rate_reference": 0.91,
            "outcome_rate_current": 0.84, "outcome_rate_outside": -0.06, "mlflow_url": "http://mlflow/#/experiments/2/runs/abc",
            "report_url": "http://evidently/projects/p/reports/s",
            "trigger": {"triggered": True, "reason": "outside drift in 2 of the last 3 weekly windows (need 2), the latest included"},
            "kpis": {"mlflow_url": "http://mlflow/#/experiments/2/runs/kpi", "dashboard_url": "http://evidently/projects/p",
                     "weeks": [{"week": "2026-W10", "actions": 5000, "automation_rate": 0.41, "escalation_rate": 0.59,
                                "positive_outcome_rate": 0.93, "median_hours_to_outcome": 14.5, "value": -312.0},
                               {"week": "2026-W11", "actions": 5000, "automation_rate": 0.38, "escalation_rate": 0.62,
                                "positive_outcome_rate": None, "median_hours_to_outcome": None, "value": None}]},
            **overrides}


def _retrain() -> dict:
    return {"status": "trained", "event": "promoted", "version": "4", "run_id": "r4", "threshold": 0.8123,
            "reasons": ["value per decision 0.41 vs champion -0.12: difference +0.53, 95% interval [+0.21, +0.88]"],
            "one_sided_alpha": 0.025,
            "differences": [{"figure": "roc_auc", "challenger": 0.81, "champion": 0.74, "difference": 0.07,
                             "interval": "[0.0410, 0.0990]", "resampled": "weeks"},
                            {"figure": "value_dr", "challenger": 0.41, "champion": -0.12, "difference": 0.53,
                             "interval": "[0.2100, 0.8800]", "resampled": "weeks"}],
            "policy_values": [{"policy": "challenger", "method": "dr", "value_per_decision": 0.41,
                               "interval": "[0.30, 0.52]", "coverage": 0.97, "ess": 1800.0}],
            "comparison": [{"metric": "roc_auc", "challenger": 0.81, "champion": 0.74}]}


def test_cycle_summary_says_what_came_in_what_drifted_what_was_decided_and_why(specs):
    ingested = {"files": 3, "rows_read": 12000, "actions_stored": 7000, "outcomes_stored": 4800, "duplicates": 200,
                "quarantined": 0, "failed_files": 0}
    models = {"reply_acceptance": {"drift": _drift(), "retrain": _retrain(), "retrain_reason": "trigger"},
              "lead_scoring": {"drift": {"status": "no_champion", "reason": "no champion yet: nothing to compare against",
                                         "drift_detected": False,
                                         "kpis": {"weeks": [{"week": "2026-W10", "actions": 2000, "automation_rate": 0.3}]}},
                               "retrain": {"status": "not_due"}, "retrain_reason": None}}
    rows = [{"model": "reply_acceptance", "decision": "promoted"}, {"model": "lead_scoring", "decision": "not_due"}]

    text = cycle_summary("2026-W12", ingested, rows, models, specs, {"reply_acceptance": "http://mlflow/#/experiments/3/runs/r4"})

    assert "# Self-optimising cycle 2026-W12" in text
    assert "7,000 actions and 4,800 outcomes from 3 file(s)" in text and "200 duplicates" in text
    replies = text.split("## `reply_acceptance`")[1].split("## `lead_scoring`")[0]
    # Drift with its links; the trigger's verdict and reason.
    assert "**Drift: DRIFT**" in replies and "template_id" in replies and "0.9100 -> 0.8400" in replies
    assert "[MLflow monitoring run](http://mlflow/#/experiments/2/runs/abc)" in replies
    assert "[Evidently report](http://evidently/projects/p/reports/s)" in replies
    assert "trigger **fired**: outside drift in 2 of the last 3" in replies
    # The decision, why, champion vs challenger with the paired intervals at the weekly level (1 - 2 * 0.025).
    assert "**Retraining (trigger): promoted** for version 4" in replies and "difference +0.53" in replies
    assert "paired 95% intervals" in replies and "| value_dr | 0.4100 | -0.1200 | 0.5300 | [0.2100, 0.8800] | weeks |" in replies
    assert "| challenger | dr | 0.4100 | [0.30, 0.52] | 0.9700 | 1800.0000 |" in replies
    assert "[MLflow training run](http://mlflow/#/experiments/3/runs/r4)" in replies
    # KPIs under the model's own names; a week whose outcomes are not final shows '-'.
    assert "| week | actions | automation rate (auto_send) | escalations to a person (human_review) | " \
           "acceptance of auto-sent replies | median hours to outcome | value (EUR) |" in replies
    assert "| 2026-W10 | 5000 | 0.4100 | 0.5900 | 0.9300 | 14.5000 | -312.0000 |" in replies
    assert "| 2026-W11 | 5000 | 0.3800 | 0.6200 | - | - | - |" in replies
    assert "[Evidently dashboard](http://evidently/projects/p)" in replies
    leads = text.split("## `lead_scoring`")[1]
    assert "not checked: no champion yet" in leads and "no new model: not due" in leads
    assert "conversion of proposed meetings" in leads and "escalations" not in leads  # the lead spec names no escalation


def _week_index(start_utc: datetime) -> int:
    return (start_utc.astimezone(BERLIN).date() - date(1970, 1, 5)).days // 7


async def _artifacts_since(since: datetime) -> dict[str, list]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.read_artifacts(limit=200)
    out: dict[str, list] = {}
    for artifact in sorted((a for a in found if a.created >= since and a.key), key=lambda a: a.created):
        out.setdefault(artifact.key, []).append(artifact)
    return out


@pytest.mark.slow
def test_two_simulated_weeks_leave_kpis_over_weeks_in_mlflow_evidently_and_prefect(loop_home, prefect_harness, tmp_path,
                                                                                     monkeypatch):
    from features.kpis import KPIS
    from flows.demo import CYCLE_DELAY, DemoConfig, run_demo
    from flows.monitor import monitor_flow
    from flows.runtime import Runtime
    from models.dashboard import MonitoringWorkspace
    from simulator.world import World, WorldConfig

    # Leads mature after 7 days here (30 in the shipped spec), so two weeks show a lead outcome figure becoming final.
    specs_dir = tmp_path / "specs"
    shutil.copytree(Runtime.from_env().settings.specs_dir, specs_dir)
    lead_spec = specs_dir / "lead_scoring.toml"
    assert "maturity_days = 30" in lead_spec.read_text()
    lead_spec.write_text(lead_spec.read_text().replace("maturity_days = 30", "maturity_days = 7"))
    monkeypatch.setenv("LOOP_SPECS_DIR", str(specs_dir))
    config = DemoConfig(weeks=2, seed=5, leads_per_week=400, emails_per_week=2000, frozen_week=1)
    started = datetime.now().astimezone()

    run_demo(config)

    runtime = Runtime.from_env()
    store, registry = runtime.store, runtime.registry
    world = World(WorldConfig(seed=config.seed), runtime.specs)
    w0, w1 = _week_index(world.week_start(0)), _week_index(world.week_start(1))
    ends = {w0: world.week_start(1), w1: world.week_start(2)}

    def history(model: str, key: str) -> dict[int, tuple[float, int]]:
        _, run_id = registry.kpi_run(model)
        return {m.step: (m.value, m.timestamp) for m in registry.client.get_metric_history(run_id, key)}

    # -- MLflow: one metric per KPI, step = week number, timestamp = the week's end --------------------
    for model in ("lead_scoring", "reply_acceptance"):
        spec = runtime.spec(model)
        actions = pl.read_delta(store.actions_uri(model))
        automation = history(model, "automation_rate")
        assert sorted(automation) == [w0, w1]
        for step, end in ends.items():
            start = end - timedelta(days=7) if step == w0 else world.week_start(1)
            week = actions.filter((pl.col("decided_at") >= start) & (pl.col("decided_at") < end))
            assert week.height > 0
            expected = (week["decision"] == spec.positive_decision).mean()
            assert automation[step] == (pytest.approx(expected), int(end.timestamp() * 1000))
            assert history(model, "actions")[step][0] == week.height

    # Replies: every draft went to a person under the cold-start rule (escalation 1); week 0's outcomes are final
    # (3 days), week 1's are not; no auto-sent reply means no acceptance figure and no value.
    escalations = history("reply_acceptance", "escalation_rate")
    assert {s: v for s, (v, _) in escalations.items()} == {w0: 1.0, w1: 1.0}
    assert sorted(history("reply_acceptance", "median_hours_to_outcome")) == [w0]
    assert history("reply_acceptance", "value")[w0][0] == 0.0 and history("reply_acceptance", "positive_outcome_rate") == {}

    # Leads: conversion of week 0's proposed meetings within 7 days, final after week 0 + 7 days; week 1's not yet.
    leads = pl.read_delta(store.actions_uri("lead_scoring"))
    proposed = leads.filter((pl.col("decided_at") < ends[w0]) & (pl.col("decision") == "propose_meeting"))
    converted = (pl.read_delta(store.outcomes_uri).filter(pl.col("outcome") == "converted")
                 .join(proposed.select("action_id", "decided_at"), on="action_id")
                 .filter(pl.col("observed_at") <= pl.col("decided_at") + timedelta(days=7)))
    conversion = history("lead_scoring", "positive_outcome_rate")
    assert sorted(conversion) == [w0]
    assert conversion[w0][0] == pytest.approx(converted.height / proposed.height)
    assert history("lead_scoring", "value")[w0][0] == pytest.approx(
        converted.height * 2500.0 * 0.65 - proposed.height * 150.0)
    assert "escalation_rate" not in registry.client.get_run(registry.kpi_run("lead_scoring")[1]).data.metrics

    # -- Evidently: the same figures as snapshots at the weeks' ends ------------------------------------
    workspace = MonitoringWorkspace(runtime.settings.workspace_dir)
    for model in ("lead_scoring", "reply_acceptance"):
        spec = runtime.spec(model)
        snapshots = workspace.snapshots(spec)
        kinds = [(s.metadata["week"], s.metadata["kind"]) for s in snapshots]
        assert sorted(kinds) == sorted([("2026-W02", "decisions"), ("2026-W03", "decisions"), ("2026-W02", "outcomes")])
        for snapshot in snapshots:
            step = w0 if snapshot.metadata["week"] == "2026-W02" else w1
            assert snapshot.timestamp == ends[step]
            figures = {r.metric_value_location.metric.params["column"]: r.value for r in snapshot.metric_results.values()}
            assert figures and set(figures) <= set(KPIS)
            assert figures == {k: pytest.approx(history(model, k)[step][0]) for k in figures}
        assert {p.title for p in workspace.workspace.get_dashboard(workspace.project_id(spec)).panels} >= {
            "Automation per week", "Share of drifted features", "Drift per feature"}

    # -- Prefect: the cycle's summary and tables, read back from the API -------------------------------
    artifacts = asyncio.run(_artifacts_since(started))
    summaries = artifacts["self-optimise-summary"]
    assert len(summaries) == 2
    last = summaries[-1].data
    assert "# Self-optimising cycle 2026-W04" in last and "**Ingested:**" in last
    _, kpi_run = registry.kpi_run("reply_acceptance")
    links = {run: exp for exp, run in MLFLOW_RUN.findall(last)}
    assert links[kpi_run] == registry.experiment_id("reply_acceptance/monitoring")
    project = workspace.project_id(runtime.spec("reply_acceptance"))
    assert f"[Evidently dashboard](http://127.0.0.1:8085/projects/{project})" in last
    assert "acceptance of auto-sent replies" in last and "conversion of proposed meetings" in last
    assert "**Drift:** not checked: no champion yet" in last and "need 6000" in last   # too few labels to train yet
    tables = {row["model"]: row for row in json.loads(artifacts["weekly-kpis"][-1].data) if row["week"] == "2026-W02"}
    assert tables["reply_acceptance"]["escalations to a person (human_review)"] == 1.0
    assert tables["lead_scoring"]["conversion of proposed meetings"] == pytest.approx(conversion[w0][0])
    assert {r["model"] for r in json.loads(artifacts["self-optimise-models"][-1].data)} == {"lead_scoring", "reply_acceptance"}

    # -- The daily monitor a day later finds nothing new to log: each week is logged once --------------
    as_of = world.week_start(config.weeks) + CYCLE_DELAY + timedelta(days=1)
    later = monitor_flow("reply_acceptance", as_of, emit_trigger=False)
    assert later["kpis"]["new_points"] == 0 and later["kpis"]["new_snapshots"] == 0
    assert len(workspace.snapshots(runtime.spec("reply_acceptance"))) == 3


def test_a_drift_report_becomes_the_workspace_snapshot_of_its_time(tmp_path):
    from models.dashboard import MonitoringWorkspace
    from models.drift import detect_drift
    from tests.test_drift import SPEC, leads

    html = tmp_path / "reports" / "drift-2026-W10.html"
    result = detect_drift(leads(600, 1), leads(600, 2, pages_shift=4.0, new_source_share=0.2), SPEC, html_path=html)
    workspace = MonitoringWorkspace(tmp_path / "evidently")
    as_of = datetime(2026, 3, 2, 2, 0, tzinfo=BERLIN)

    written = workspace.add_drift(SPEC, html.with_suffix(".json"), as_of, "2026-W10")
    dashboard_file = tmp_path / "evidently" / written.project_id / "dashboard.json"
    first_write = dashboard_file.stat().st_mtime_ns
    again = workspace.add_drift(SPEC, html.with_suffix(".json"), as_of, "2026-W10")   # a rerun of the same monitor

    assert again == written and dashboard_file.stat().st_mtime_ns == first_write   # replaced, not added; dashboard kept
    [snapshot] = workspace.snapshots(SPEC)
    assert snapshot.timestamp == as_of and snapshot.tags == ["drift"]
    assert snapshot.metadata == {"model": "lead_scoring", "week": "2026-W10", "kind": "drift", "as_of": as_of.isoformat()}
    values = {(r.metric_value_location.metric.params["type"].rsplit(":", 1)[-1],
               r.metric_value_location.metric.params.get("column")): r for r in snapshot.metric_results.values()}
    # The figures models/drift.py read from the same report: per-feature distances and the score's.
    assert values[("ValueDrift", "pages_visited")].value == pytest.approx(result.column_scores["pages_visited"])
    assert values[("ValueDrift", "score")].value == pytest.approx(result.score_distance)
    assert values[("DriftedColumnsCount", None)].share.value > 0


@pytest.mark.slow
def test_loop_ui_serves_the_evidently_dashboards_with_data_beside_prefect_and_mlflow(loop_home, specs, tmp_path):
    """`loop ui` (what `make ui` runs) on free ports: each panel of the dashboards finds its points over the weeks."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from features.kpis import weekly_kpis
    from flows.runtime import Runtime
    from models.dashboard import MonitoringWorkspace, dashboard_model
    from models.drift import detect_drift
    from tests.helpers import free_port, wait_until
    from tests.test_drift import leads
    from tests.test_kpis import TUE_W02, frames, hours

    spec = specs["reply_acceptance"]
    week = timedelta(days=7)
    actions, outcomes = frames([(f"a{i}-{w}", TUE_W02 + w * week, "auto_send" if i % 3 else "human_review")
                                for w in range(3) for i in range(6)],
                               [(f"a{i}-{w}", TUE_W02 + w * week + hours(5 + i), "resolved") for w in range(3) for i in range(6)])
    workspace = MonitoringWorkspace(Runtime.from_env().settings.workspace_dir)
    written = workspace.add_kpis(spec, weekly_kpis(actions, outcomes, spec, TUE_W02 + 4 * week))
    assert len(written) == 6                          # 3 weeks x (decisions, outcomes)
    lead_spec = specs["lead_scoring"]
    for w in range(2):
        html = loop_home / "reports" / f"drift-{w}.html"
        detect_drift(leads(300, 1), leads(300, 2 + w, pages_shift=2.0 * w), lead_spec, html_path=html)
        workspace.add_drift(lead_spec, html.with_suffix(".json"), TUE_W02 + w * week, f"2026-W0{2 + w}")

    ports = {"prefect": free_port(), "mlflow": free_port(), "evidently": free_port()}
    env = dict(os.environ, LOOP_HOME=str(loop_home), PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--prefect-port", str(ports["prefect"]),
                           "--mlflow-port", str(ports["mlflow"]), "--evidently-port", str(ports["evidently"])],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        evidently = f"http://127.0.0.1:{ports['evidently']}"
        wait_until(lambda: answers(f"{evidently}/api/projects"), "the Evidently UI", seconds=120)
        names = {p["name"] for p in httpx.get(f"{evidently}/api/projects", timeout=10).json()}
        assert names == {"reply_acceptance", "lead_scoring"}
        for model in (spec, lead_spec):
            dashboard = dashboard_model(model)
            has_data = {}
            for panel in dashboard.panels:
                filters = [{"tags": v.tags, "metadata": v.metadata, "metric": v.metric, "metric_labels": v.metric_labels}
                           for v in panel.values]
                reply = httpx.post(f"{evidently}/api/v2/snapshots/{workspace.project_id(model)}/data_series_batch",
                                   json={"series_filter": filters}, timeout=30)
                assert reply.status_code in (200, 201), reply.text
                has_data[panel.title] = any(v is not None for s in reply.json()["series"] for v in s["values"])
            tab = {t.title: t for t in dashboard.tabs}["KPIs" if model is spec else "Drift"]
            titles = {p.id: p.title for p in dashboard.panels}
            assert all(has_data[titles[p]] for p in tab.panels), has_data
        wait_until(lambda: answers(f"http://127.0.0.1:{ports['mlflow']}/health"), "the MLflow UI", seconds=120)
        wait_until(lambda: answers(f"http://127.0.0.1:{ports['prefect']}/api/health"), "the Prefect UI", seconds=120)
    finally:
        ui.send_signal(signal.SIGINT)                    # `loop ui` stops the three servers it started
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
        time.sleep(1)
    assert f"Evidently dashboards: http://127.0.0.1:{ports['evidently']}" in ui.stdout.read()
