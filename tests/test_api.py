"""The scoring API over loopback: a real `loop api` process (uvicorn), its write-ahead log, the real
Delta store it flushes into and the real MLflow registry it follows. The crash tests kill it with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from features.pseudonymise import pseudonym
from features.training_set import Split
from flows.runtime import Runtime
from models.registry import CHAMPION
from models.train import fit_model, sklearn_inputs
from service.wal import ACTIONS, WalError, WriteAheadLog, read_segment
from simulator.world import World, WorldConfig
from tests.helpers import free_port, wait_until

KEY = "api-test-key"
LEAD = {"source": "referral", "industry": "retail", "region": "nord", "company_size": 40.0,
        "pages_visited": 6.0, "email_opens": 2.0, "requested_demo": False}


@contextmanager
def api_process(home: Path, **env: str):
    """`loop api` in its own process on a free loopback port; yields (base url, process)."""
    port = free_port()
    environment = dict(os.environ, LOOP_HOME=str(home), LOOP_PSEUDONYM_KEY=KEY,
                       MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", **env)
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "api", "--port", str(port)], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"`loop api` did not become ready: {process.communicate()[0][-2000:]}")
        time.sleep(0.3)
    try:
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def _runtime(home: Path, monkeypatch) -> Runtime:
    monkeypatch.setenv("LOOP_HOME", str(home))
    monkeypatch.setenv("LOOP_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return Runtime.from_env()


def _stored_ids(runtime: Runtime, model: str = "lead_scoring") -> list[str]:
    return runtime.store.scan_actions(model).select("action_id").collect().get_column("action_id").to_list()


def _decide(url: str, refs: list[str], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/lead_scoring/decide", json={"entities": [{"entity_ref": r, **LEAD} for r in refs]},
                      headers=headers, timeout=30)


def test_decisions_and_outcomes_reach_the_store_pseudonymised(tmp_path, monkeypatch):
    home = tmp_path / "loop"
    with api_process(home, LOOP_API_FLUSH_SECONDS="0.5") as (url, _):
        single = _decide(url, ["anna@example.com", "ben@example.com"]).json()
        columns = {"entity_ref": ["cara@example.com", "dan@example.com"],
                   **{k: [v, None] for k, v in LEAD.items()}}
        batch = httpx.post(f"{url}/v1/lead_scoring/decide", json={"columns": columns}, timeout=30).json()
        ids = [d["action_id"] for d in single["decisions"]] + batch["columns"]["action_id"]
        recorded = httpx.post(f"{url}/v1/outcomes", json={"outcomes": [
            {"action_id": ids[0], "outcome": "converted", "revenue": 1200.0},
            {"action_id": ids[1], "outcome": "lost", "model": "lead_scoring"},
            {"action_id": "reply-1", "outcome": "edited", "share_kept": 0.7, "model": "reply_acceptance"}]}, timeout=30)
        assert recorded.json() == {"recorded": 3}
        runtime = _runtime(home, monkeypatch)
        wait_until(lambda: runtime.store.scan_outcomes().collect().height == 3, "the outcomes to be flushed")

    assert len(set(ids)) == 4
    assert single["model_version"] == "rule" and batch["model_version"] == "rule"
    actions = runtime.store.scan_actions("lead_scoring").collect().sort("action_id")
    assert sorted(ids) == actions.get_column("action_id").to_list()
    expected_pids = {pseudonym(r, KEY.encode()) for r in ["anna@example.com", "ben@example.com", "cara@example.com",
                                                          "dan@example.com"]}
    assert set(actions.get_column("entity_id")) == expected_pids
    # What the caller was told is what was stored.
    told = dict(zip(ids, [d["decision"] for d in single["decisions"]] + batch["columns"]["decision"]))
    assert dict(zip(actions["action_id"], actions["decision"])) == told
    assert actions.filter(pl.col("action_id") == ids[3]).get_column("industry").to_list() == [None]
    outcomes = runtime.store.scan_outcomes().collect().sort("outcome")
    assert outcomes.get_column("action_id").to_list() == [ids[0], "reply-1", ids[1]]
    assert outcomes.get_column("model").to_list() == ["lead_scoring", "reply_acceptance", "lead_scoring"]
    assert outcomes.get_column("share_kept").to_list() == [None, 0.7, None]
    # No raw identifier anywhere under the state folder.
    for path in home.rglob("*"):
        if path.is_file():
            assert b"@example.com" not in path.read_bytes(), path


def test_bad_payloads_are_refused_with_a_message_that_names_the_field(tmp_path):
    with api_process(tmp_path / "loop") as (url, _):
        decide = f"{url}/v1/lead_scoring/decide"
        wrong_type = httpx.post(decide, json={"entities": [{"entity_ref": "x", **LEAD, "company_size": "big"}]})
        extra = httpx.post(decide, json={"entities": [{"entity_ref": "x", **LEAD, "email_body": "Dear ..."}]})
        ragged = httpx.post(decide, json={"columns": {"entity_ref": ["x", "y"], **{k: [v] for k, v in LEAD.items()}}})
        both = httpx.post(decide, json={})
        future = httpx.post(f"{url}/v1/outcomes", json={"outcomes": [
            {"action_id": "a", "outcome": "lost", "observed_at": "2999-01-01T00:00:00+00:00"}]})
        naive = httpx.post(f"{url}/v1/outcomes", json={"outcomes": [
            {"action_id": "a", "outcome": "lost", "observed_at": "2026-01-01T00:00:00"}]})
        wrong_outcome = httpx.post(f"{url}/v1/outcomes", json={"outcomes": [
            {"action_id": "a", "outcome": "accepted", "model": "lead_scoring"}]})
        share_above_1 = httpx.post(f"{url}/v1/outcomes", json={"outcomes": [
            {"action_id": "a", "outcome": "edited", "share_kept": 1.2}]})
        unknown_model = httpx.post(f"{url}/v1/churn/decide", json={"entities": [{"entity_ref": "x"}]})
        schema = httpx.get(f"{url}/openapi.json").json()

    for response in (wrong_type, extra, ragged, both, future, naive, wrong_outcome, share_above_1):
        assert response.status_code == 422, response.text
    assert "outcomes.0.share_kept" in share_above_1.json()["message"]
    assert "entities.0.company_size" in wrong_type.json()["message"]
    assert "entities.0.email_body" in extra.json()["message"]
    assert "requested_demo has 1" in ragged.json()["message"]
    assert "exactly one of 'entities'" in both.json()["message"]
    assert "outcomes.0.observed_at" in future.json()["message"] and "in the future" in future.json()["message"]
    assert "outcomes.0.observed_at" in naive.json()["message"]
    assert "is not one of converted, lost" in wrong_outcome.json()["message"]
    assert unknown_model.status_code == 404
    assert {"/v1/lead_scoring/decide", "/v1/reply_acceptance/decide", "/v1/outcomes", "/healthz", "/readyz"} <= set(schema["paths"])
    entity = schema["components"]["schemas"]["LeadScoringEntity"]["properties"]
    assert {"entity_ref", "source", "company_size", "requested_demo"} <= set(entity)


def _register_champion(runtime: Runtime) -> tuple[str, object]:
    """Fit a lead model on simulated leads (labels from a fixed rule plus noise) and make it champion."""
    spec = runtime.spec("lead_scoring")
    world = World(WorldConfig(seed=3, leads_per_week=1500), runtime.specs)
    frames = []
    for week in range(3):
        population = world.population("lead_scoring", week)
        noise = np.random.default_rng(week).random(population.height) < 0.15
        label = ((pl.col("requested_demo") | (pl.col("pages_visited") > 5)).cast(pl.Int8) ^ pl.lit(pl.Series(noise))
                 .cast(pl.Int8))
        meeting = np.random.default_rng(10 + week).random(population.height) < 0.5
        frames.append(population.with_columns(label=label, week=pl.lit(f"2026-W0{week + 1}"),
                                              decision=pl.Series(np.where(meeting, "propose_meeting", "nurture"))))
    split = Split(fit=frames[0], calibration=frames[1], test=frames[2])
    trained = fit_model(split, spec)
    _, version = runtime.registry.log_training(spec, trained, lineage={"as_of": "2026-01-19T00:00:00+00:00"},
                                               input_example=frames[0].head(5), week="2026-W03", plots={},
                                               run_name="api-test")
    runtime.registry.set_alias("lead_scoring", CHAMPION, version)
    return version, trained


def test_the_service_follows_the_champion_alias_without_a_restart(tmp_path, monkeypatch):
    home = tmp_path / "loop"
    with api_process(home, LOOP_API_RELOAD_SECONDS="0.5") as (url, process):
        assert _decide(url, ["early@example.com"]).json()["model_version"] == "rule"
        runtime = _runtime(home, monkeypatch)
        version, trained = _register_champion(runtime)
        wait_until(lambda: httpx.get(f"{url}/v1/models").json()["lead_scoring"]["model_version"] == version,
                  "the service to load the new champion")
        answer = _decide(url, ["later@example.com"]).json()
        assert process.poll() is None
    assert answer["model_version"] == version
    assert answer["threshold"] == pytest.approx(trained.threshold.threshold, abs=1e-6)
    # Independent of the serving path: the pandas input the model was trained and evaluated with. The lead
    # model is decision-aware: its score is the conversion chance a meeting adds.
    inputs = sklearn_inputs(pl.DataFrame([LEAD]), runtime.spec("lead_scoring"))
    calibrated = trained.estimator.estimator
    expected = (calibrated.predict_proba(inputs.assign(decision="propose_meeting"))[0, 1]
                - calibrated.predict_proba(inputs.assign(decision="nurture"))[0, 1])
    assert answer["decisions"][0]["score"] == pytest.approx(expected, abs=1e-9)
    decision = answer["decisions"][0]
    by_threshold = "propose_meeting" if decision["score"] >= answer["threshold"] else "nurture"
    # Near the threshold the policy explores (action ids are random here): the other decision, taken and logged
    # with the exploration share's small propensity.
    assert (decision["decision"] == by_threshold) == (decision["propensity"] > 0.5)


def test_a_kill_after_the_answer_loses_no_action_and_a_replay_adds_none_twice(tmp_path, monkeypatch):
    home = tmp_path / "loop"
    # The flusher never runs on its own here: everything answered is only in the log when the process dies.
    with api_process(home, LOOP_API_FLUSH_SECONDS="3600") as (url, process):
        ids = [d["action_id"] for i in range(5) for d in _decide(url, [f"p{i}a@example.com", f"p{i}b@example.com"]).json()["decisions"]]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    runtime = _runtime(home, monkeypatch)
    assert _stored_ids(runtime) == []                     # killed between the answers and the batch
    wal = home / "api-wal"
    segments = sorted(wal.glob("*.wal"))
    assert segments and sum(read_segment(s).rows for s in segments) == 10
    kept_copy = segments[-1].read_bytes()
    with open(segments[-1], "ab") as handle:              # a torn, never-answered last record
        handle.write(b"LWAL" + b"A" + (10_000).to_bytes(4, "little") + b"\0" * 30)

    with api_process(home, LOOP_API_FLUSH_SECONDS="3600") as (url, _):
        replayed = httpx.get(f"{url}/readyz").json()
    assert replayed["replayed_rows"] == 10
    assert sorted(_stored_ids(runtime)) == sorted(ids)

    # A crash after the ingest but before the segment's removal: the same segment is replayed again.
    segments[-1].write_bytes(kept_copy)
    with api_process(home, LOOP_API_FLUSH_SECONDS="3600"):
        pass
    assert sorted(_stored_ids(runtime)) == sorted(ids)
    assert not list(wal.glob("*.wal"))


def test_a_token_is_required_when_set_and_binding_beyond_loopback_needs_one(tmp_path):
    home = tmp_path / "loop"
    with api_process(home, LOOP_API_TOKEN="s3cret") as (url, _):
        assert _decide(url, ["x@example.com"]).status_code == 401
        assert _decide(url, ["x@example.com"], Authorization="Bearer wrong").status_code == 401
        assert _decide(url, ["x@example.com"], Authorization="Bearer s3cret").status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200
    env = dict(os.environ, LOOP_HOME=str(home), LOOP_PSEUDONYM_KEY=KEY)
    env.pop("LOOP_API_TOKEN", None)
    refused = subprocess.run([sys.executable, "-m", "flows.cli", "api", "--host", "0.0.0.0", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1
    assert "LOOP_API_TOKEN" in refused.stdout


def test_the_log_reads_whole_records_only_and_has_one_owner(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal")
    wal.append(ACTIONS, pl.DataFrame({"action_id": ["a", "b"]}))
    first_record = wal.active.stat().st_size
    wal.append(ACTIONS, pl.DataFrame({"action_id": ["c"]}))
    with pytest.raises(WalError, match="another process"):
        WriteAheadLog(tmp_path / "wal")
    segment = wal.active
    data = segment.read_bytes()
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF                                   # flip a payload bit of the second record
    segment.write_bytes(bytes(corrupt))
    read = read_segment(segment)
    assert [f.get_column("action_id").to_list() for f in read.actions] == [["a", "b"]]
    assert read.torn_bytes == len(data) - first_record
    segment.write_bytes(data)
    assert [f.height for f in read_segment(segment).actions] == [2, 1]
    wal.close()


def test_the_micro_batcher_scores_waiting_requests_together_and_returns_each_its_own_rows():
    import asyncio

    from service.batching import MicroBatcher

    calls: list[tuple[str, int]] = []

    def work(model: str, rows: pl.DataFrame) -> pl.DataFrame:
        calls.append((model, rows.height))
        if model == "broken":
            raise ValueError("scoring failed")
        return rows.with_columns(doubled=pl.col("x") * 2)

    async def main() -> list:
        batcher = MicroBatcher(work)
        batcher.start()
        requests = [batcher.submit("a" if i % 3 else "b", pl.DataFrame({"x": list(range(i, i + i % 4 + 1))}))
                    for i in range(30)]
        results = await asyncio.gather(*requests, batcher.submit("broken", pl.DataFrame({"x": [1]})),
                                       return_exceptions=True)
        later = await batcher.submit("a", pl.DataFrame({"x": [7]}))   # the scorer survived the failure
        await batcher.stop()
        return [*results, later]

    results = asyncio.run(main())
    for i, result in enumerate(results[:30]):
        assert result.get_column("x").to_list() == list(range(i, i + i % 4 + 1))
        assert result.get_column("doubled").to_list() == [2 * x for x in range(i, i + i % 4 + 1)]
    assert isinstance(results[30], ValueError) and "scoring failed" in str(results[30])
    assert results[31].get_column("doubled").to_list() == [14]
    # The 31 requests submitted together were scored in one call per model, not one call each.
    assert sorted(calls[:3]) == [("a", sum(i % 4 + 1 for i in range(30) if i % 3)),
                                 ("b", sum(i % 4 + 1 for i in range(30) if not i % 3)), ("broken", 1)]


def test_the_simulated_crm_closes_the_loop_through_the_api(tmp_path, monkeypatch, specs):
    from simulator.feed import feed_week

    home = tmp_path / "loop"
    world = World(WorldConfig(seed=4, leads_per_week=300, emails_per_week=500), specs)
    with api_process(home, LOOP_API_FLUSH_SECONDS="0.5") as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        results = [feed_week(client, world, specs[model], 0) for model in ("lead_scoring", "reply_acceptance")]
        runtime = _runtime(home, monkeypatch)
        wait_until(lambda: runtime.store.scan_outcomes().collect().height == sum(r.outcomes for r in results),
                  "the fed outcomes to reach the store")
    for result, expected in zip(results, (300, 500), strict=True):
        assert result.decisions == expected and result.model_versions == ("rule",)
        actions = runtime.store.scan_actions(result.model).collect()
        assert actions.height == expected
        assert int((actions["decision"] == specs[result.model].positive_decision).sum()) == result.positive
    outcomes = runtime.store.scan_outcomes().collect()
    # Every reported outcome belongs to a stored action of its model.
    for model in ("lead_scoring", "reply_acceptance"):
        ids = runtime.store.scan_actions(model).select("action_id").collect()
        assert outcomes.filter(pl.col("model") == model).join(ids, on="action_id", how="anti").is_empty()
