"""The guard after promotion on constructed worlds whose true gain is known in closed form.

The new champion proposes meetings from score 0.4, the previous one from 0.5 (both exploring near
their thresholds). In the world "useless" a meeting lifts conversion only from score 0.7 on, so the new
policy's extra meetings cost money and its true gain is negative although the promotion claimed +15 EUR
per decision; in the world "helpful" meetings pay from 0.4 on. Pure rule tests first, then the whole path with a real MLflow registry (SQLite) and a real
Delta store, and the monitor flow on the Prefect test harness saying so in its artifact.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from models import ope
from models.exploration import explore, positive_probability
from models.gates import estimate_settings
from models.guard import Claim, guard_period, guard_verdict, run_guard
from tests.test_ope import spec  # noqa: F401 - the one-feature lead spec of the OPE tests is a fixture

NEW, PREVIOUS = 0.4, 0.5


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """The outcome model's fits on one OpenMP thread: on a busy 2-core machine spinning threads made them 8x slower."""
    import sklearn.ensemble  # noqa: F401 - load its OpenMP runtime first: threadpoolctl limits loaded libraries only
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


CLAIM = Claim(gain=15.0, low=5.0, high=25.0, value=70.0, previous_value=55.0)


# From which score on a meeting lifts conversion, per world.
WORLDS = {"useless": 0.7, "helpful": NEW, "late": 0.8}


def world_probabilities(score: np.ndarray, meeting: np.ndarray, world: str) -> np.ndarray:
    """P(converted | score, decision): nurtured leads convert a little; meetings lift it from a world's score on."""
    start = WORLDS[world]
    lift = np.where(score >= start, 0.6 * score, 0.0)
    return 0.05 + 0.15 * score + np.where(meeting, lift, 0.0)


def true_gain(spec, score: np.ndarray, world: str, new: float = NEW, previous: float = PREVIOUS) -> float:
    """E[value of the new policy - value of the previous one] per decision, from the world's probabilities."""
    o = spec.objective

    def value(threshold: float) -> float:
        pi = positive_probability(score, threshold, spec)
        v_pos = o.value_per_conversion * world_probabilities(score, np.ones_like(score, bool), world) - o.cost_per_action
        v_neg = o.value_per_conversion * world_probabilities(score, np.zeros_like(score, bool), world)
        return float(np.mean(pi * v_pos + (1 - pi) * v_neg))

    return value(new) - value(previous)


def logs(spec, world: str, n: int = 5000, seed: int = 0) -> pl.DataFrame:
    """Two weeks of labelled decisions taken by the new champion (threshold 0.4, with exploration)."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    ids = pl.Series([f"a{i}" for i in range(n)])
    taken = explore(x, NEW, ids, spec)
    meeting = (taken.decisions == spec.positive_decision).to_numpy()
    label = rng.random(n) < world_probabilities(x, meeting, world)
    return pl.DataFrame({"x": x, "decision": taken.decisions, "propensity": taken.propensity, "label": label.astype(np.int8),
                         "week": np.where(np.arange(n) < n // 2, "2026-W12", "2026-W13"), "entity_id": ids})


def test_a_champion_clearly_short_of_its_claim_is_rolled_back(spec):
    frame = logs(spec, "useless")
    x = frame["x"].to_numpy()
    truth = true_gain(spec, x, "useless")
    assert truth < -5          # by construction: the extra meetings lift nothing and cost 150 EUR each
    verdict = guard_verdict(spec, frame, x, NEW, x, PREVIOUS, CLAIM)
    assert verdict.action == "rollback"
    assert verdict.gain.low <= truth <= verdict.gain.high
    assert verdict.gain.high < CLAIM.gain - spec.gates.guard_margin
    assert "fell short" in verdict.reason and f"{verdict.gain.difference:+.2f}" in verdict.reason


def test_a_champion_that_delivers_its_claim_stays(spec):
    frame = logs(spec, "helpful")
    x = frame["x"].to_numpy()
    truth = true_gain(spec, x, "helpful")
    assert truth > 5
    verdict = guard_verdict(spec, frame, x, NEW, x, PREVIOUS, dataclasses.replace(CLAIM, gain=truth))
    assert verdict.action == "held" and verdict.gain.low <= truth <= verdict.gain.high


def test_a_champion_short_of_an_optimistic_claim_but_clearly_better_stays(spec):
    frame = logs(spec, "helpful")
    x = frame["x"].to_numpy()
    verdict = guard_verdict(spec, frame, x, NEW, x, PREVIOUS, dataclasses.replace(CLAIM, gain=60.0))
    assert verdict.gain.high < 60.0 - spec.gates.guard_margin and verdict.gain.low > 0
    assert verdict.action == "held" and "still clearly better" in verdict.reason


def test_no_automatic_rollback_when_the_logs_cannot_vouch_for_the_previous_champion(spec):
    frame = logs(spec, "late")
    x = frame["x"].to_numpy()
    assert true_gain(spec, x, "late", previous=0.8) < -20
    # The previous champion (threshold 0.8) nurtured leads of score 0.6-0.8, which the new one always met
    # (outside its explored band 0.2-0.6): a fifth of its decisions the logs never took.
    verdict = guard_verdict(spec, frame, x, NEW, x, 0.8, CLAIM)
    assert verdict.action == "uncovered" and verdict.previous_value.coverage < spec.gates.min_coverage
    assert "loop rollback" in verdict.reason


def test_too_few_labelled_decisions_wait(spec):
    frame = logs(spec, "useless", n=spec.gates.min_labelled_rows - 1)
    x = frame["x"].to_numpy()
    assert guard_verdict(spec, frame, x, NEW, x, PREVIOUS, CLAIM).action == "wait"


def test_the_guard_watches_only_the_latest_promotion_for_its_weeks(spec):
    promoted = datetime(2026, 3, 16, 3, tzinfo=UTC)
    audit = pl.DataFrame({"at": [promoted - timedelta(weeks=3), promoted], "version": ["1", "2"],
                          "event": ["promoted", "approved"], "recorded_at": [promoted - timedelta(weeks=3), promoted]})
    period = guard_period(spec, audit, "2", "1", promoted + timedelta(days=3))
    assert (period.start, period.end) == (promoted, promoted + timedelta(days=3))
    later = guard_period(spec, audit, "2", "1", promoted + timedelta(weeks=5))
    assert later.end == promoted + timedelta(weeks=2)            # the logs of the guard weeks only
    assert "are over" in guard_period(spec, audit, "2", "1", promoted + timedelta(weeks=2, days=spec.outcomes.maturity_days))
    restored = audit.vstack(pl.DataFrame({"at": [promoted + timedelta(days=1)], "version": ["1"], "event": ["rolled_back"],
                                          "recorded_at": [promoted + timedelta(days=1)]}))
    assert "not a promotion" in guard_period(spec, restored, "1", None, promoted + timedelta(days=2))
    assert "nothing to go back to" in guard_period(spec, audit.head(1), "1", None, promoted)


# ---- the whole path: real registry, real store ---------------------------------------------------

MODEL = "lead_scoring"
PROMOTED_AT = datetime(2026, 3, 16, 3, tzinfo=UTC)
AS_OF = PROMOTED_AT + timedelta(weeks=2, days=3)


def wide_spec(specs):
    """The lead spec with exploration wide enough for the previous threshold's decisions to be covered."""
    return dataclasses.replace(specs[MODEL], exploration=dataclasses.replace(specs[MODEL].exploration, share=0.2, band=0.2))


def _register(runtime, estimator, threshold: float, metrics: dict[str, float]) -> str:
    """A training run with these promotion figures and the model registered from it, tagged with its threshold."""
    import mlflow

    registry = runtime.registry
    with mlflow.start_run(experiment_id=registry.experiment_id(f"{MODEL}/training")):
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(sk_model=estimator, name="model", registered_model_name=MODEL,
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    version = str(info.registered_model_version)
    registry.tag_version(MODEL, version, {"threshold": str(threshold), "as_of": (PROMOTED_AT - timedelta(days=1)).isoformat()})
    return version


def _pages_model(spec):
    """score = sigmoid((pages_visited - 10) / 4): a lead model whose score is known for every lead."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from features.build import model_inputs

    frame = model_inputs(_leads(np.array([0.0, 20.0])), spec)
    model = Pipeline([("pick", ColumnTransformer([("pages", "passthrough", ["pages_visited"])])),
                      ("score", LogisticRegression())]).fit(frame, [0, 1])
    model.named_steps["score"].coef_ = np.array([[0.25]])
    model.named_steps["score"].intercept_ = np.array([-2.5])
    return model


def _leads(pages: np.ndarray, start: datetime = PROMOTED_AT) -> pl.DataFrame:
    n = len(pages)
    step = timedelta(weeks=2) / max(n, 1)
    return pl.DataFrame({"entity_ref": [f"lead-{i}@example.de" for i in range(n)],
                         "decided_at": pl.Series([start + (i + 0.5) * step for i in range(n)], dtype=pl.Datetime("us", "UTC")),
                         "source": "website_form", "industry": "retail", "region": "nord", "company_size": 40.0,
                         "pages_visited": pages, "email_opens": 1.0, "requested_demo": False})


def _promoted_with_logs(runtime, specs, tmp_path, world: str, reference: bool = False) -> tuple[str, str, float]:
    """Version 1 champion, version 2 promoted over it claiming +15 EUR per decision, then two weeks of
    version 2's decisions with outcomes from ``world`` (with ``reference``, also version 1's four weeks
    before, its training window). Returns (v1, v2, the true gain)."""
    from features.clock import SimulatedClock
    from features.ingest import ingest_paths
    from models.policy import Policy
    from models.promotion import AuditTrail, PromotionDecision, apply_decision

    spec = wide_spec(specs)
    store, registry, key = runtime.store, runtime.registry, runtime.settings.pseudonym_key
    model = _pages_model(spec)
    v1 = _register(runtime, model, PREVIOUS, {"test_roc_auc": 0.7})
    claim = {"diff_value_dr_difference": CLAIM.gain, "diff_value_dr_low": CLAIM.low, "diff_value_dr_high": CLAIM.high,
             "ope_dr_challenger_estimate": CLAIM.value, "ope_dr_champion_estimate": CLAIM.previous_value}
    v2 = _register(runtime, model, NEW, claim)
    apply_decision(PromotionDecision("promote", ("first model",)), MODEL, v1, registry,
                   AuditTrail(store, registry, PROMOTED_AT - timedelta(weeks=4)), "2026-W08")
    apply_decision(PromotionDecision("promote", ("value gain +15.00",)), MODEL, v2, registry,
                   AuditTrail(store, registry, PROMOTED_AT), "2026-W12")

    rng = np.random.default_rng(3)
    entities = _leads(rng.uniform(0.0, 20.0, 4000))
    actions = Policy(spec, registry.load(MODEL, v2)).decide(entities, key)
    if reference:
        before = _leads(rng.uniform(0.0, 20.0, 4000), PROMOTED_AT - timedelta(weeks=4, days=1)).with_columns(
            pl.col("entity_ref").str.replace("lead-", "earlier-lead-"),
            pl.col("decided_at") + (pl.col("decided_at") - pl.col("decided_at").min()))   # spread over four weeks
        actions = pl.concat([Policy(spec, registry.load(MODEL, v1)).decide(before, key), actions])
    score = actions["score"].to_numpy()
    meeting = (actions["decision"] == spec.positive_decision).to_numpy()
    converted = rng.random(actions.height) < world_probabilities(score, meeting, world)
    # Sales closes every lead within two days, won or lost: every label is mature well before AS_OF.
    outcomes = actions.select("action_id", (pl.col("decided_at") + timedelta(days=2)).alias("observed_at"),
                              pl.Series("outcome", np.where(converted, "converted", "lost")))
    actions.write_parquet(tmp_path / "actions.parquet")
    outcomes.write_parquet(tmp_path / "outcomes.parquet")
    report = ingest_paths([tmp_path / "actions.parquet", tmp_path / "outcomes.parquet"], store, SimulatedClock(AS_OF), key)
    assert report.clean
    return v1, v2, true_gain(spec, score, world)


def test_a_promotion_the_new_weeks_contradict_is_rolled_back_and_audited(loop_home, tmp_path, specs):
    from flows.runtime import Runtime
    from models.registry import CHAMPION

    runtime = Runtime.from_env()
    v1, v2, truth = _promoted_with_logs(runtime, specs, tmp_path, "useless")
    assert truth < -5
    result = run_guard(runtime.store, runtime.registry, wide_spec(specs), AS_OF)
    assert result["status"] == "rolled_back" and result["restored"] == v1, result["reason"]
    assert str(runtime.registry.version_by_alias(MODEL, CHAMPION).version) == v1
    audit = runtime.store.scan_audit().filter(pl.col("event") == "rolled_back").collect()
    assert audit.height == 1 and audit["actor"][0] == "guard" and audit["version"][0] == v1
    assert f"restored from version {v2}" in audit["reasons"][0] and "claimed at promotion +15.00" in audit["reasons"][0]
    # The restored champion is not guarded: running again changes nothing.
    again = run_guard(runtime.store, runtime.registry, wide_spec(specs), AS_OF + timedelta(hours=1))
    assert again["status"] == "not_guarded" and "rolled_back" in again["reason"]


def test_a_promotion_the_new_weeks_confirm_is_kept(loop_home, tmp_path, specs):
    from flows.runtime import Runtime
    from models.registry import CHAMPION

    runtime = Runtime.from_env()
    _, v2, truth = _promoted_with_logs(runtime, specs, tmp_path, "helpful")
    assert truth > 0
    result = run_guard(runtime.store, runtime.registry, wide_spec(specs), AS_OF)
    assert result["status"] == "held", result["reason"]
    assert str(runtime.registry.version_by_alias(MODEL, CHAMPION).version) == v2
    assert runtime.store.scan_audit().filter(pl.col("event") == "rolled_back").collect().is_empty()


def test_the_monitor_flow_runs_the_guard_rolls_back_and_says_so(loop_home, tmp_path, specs, monkeypatch, prefect_harness):
    """The weekly monitor on a Prefect API: the guard rolls back before the drift check, the rollback is
    in the guard artifact and on the monitoring run in MLflow."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.monitor import monitor_flow
    from flows.runtime import Runtime
    from models.registry import CHAMPION

    # The flow reads its specs from LOOP_SPECS_DIR: the lead spec with the wide exploration of these worlds.
    folder = tmp_path / "specs"
    folder.mkdir()
    lead = specs[MODEL].source_text
    wide, count = re.subn(r"(?m)^share = .*\n((?:#.*\n)*)band = .*$", r"share = 0.2\n\1band = 0.2", lead)
    assert count == 1
    (folder / "lead_scoring.toml").write_text(wide)
    (folder / "reply_acceptance.toml").write_text(specs["reply_acceptance"].source_text)
    monkeypatch.setenv("LOOP_SPECS_DIR", str(folder))
    runtime = Runtime.from_env()
    assert runtime.spec(MODEL).exploration == wide_spec(specs).exploration
    v1, _, _ = _promoted_with_logs(runtime, runtime.specs, tmp_path, "useless", reference=True)

    state = monitor_flow(MODEL, AS_OF, emit_trigger=False, return_state=True)
    result = state.result()
    assert result["guard"]["status"] == "rolled_back"
    assert str(runtime.registry.version_by_alias(MODEL, CHAMPION).version) == v1
    # Drift was then measured against the restored champion.
    assert result["status"] == "checked" and str(result["champion_version"]) == v1

    with get_client(sync_client=True) as client:
        # This run's artifact: the test harness is shared, other tests' monitor runs write the same key.
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["lead-scoring-guard"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert found and f"**ROLLED BACK** to version {v1}" in found[0].data and "claimed at promotion +15.00" in found[0].data
    run = runtime.registry.client.get_run(result["run_id"])
    assert run.data.metrics["guard_rolled_back"] == 1.0 and run.data.metrics["guard_gain"] < CLAIM.gain
    assert {"reports/guard.md", "reports/patterns.md"} <= {a.path for a in runtime.registry.client.list_artifacts(
        result["run_id"], "reports")}


def test_rows_of_segments_held_in_safe_mode_are_left_out(loop_home, tmp_path, specs):
    from features.safe_mode import Segment, enter
    from flows.runtime import Runtime
    from models.registry import CHAMPION

    runtime = Runtime.from_env()
    _, v2, _ = _promoted_with_logs(runtime, specs, tmp_path, "useless")
    # Every lead of these weeks came from the website form: held, none of them tells the two champions apart.
    enter(runtime.store, MODEL, [Segment("source", "website_form", "fell")], PROMOTED_AT + timedelta(days=1))
    result = run_guard(runtime.store, runtime.registry, wide_spec(specs), AS_OF)
    assert result["status"] == "wait" and result["figures"]["rows"] == 0
    assert result["held_segments_left_out"] == ["source=website_form"]
    assert str(runtime.registry.version_by_alias(MODEL, CHAMPION).version) == v2


def test_with_held_rows_left_out_the_bar_is_the_previous_champion_not_the_claim(spec):
    # The new champion delivers far less than claimed (60) but is not worse than the previous one: the claim,
    # measured with rows that are now held, cannot be held against it.
    frame = logs(spec, "helpful")
    x = frame["x"].to_numpy()
    optimistic = dataclasses.replace(CLAIM, gain=60.0)
    kept = guard_verdict(spec, frame, x, NEW, x, NEW, optimistic, claim_comparable=False)   # the same policy twice
    assert kept.gain.difference == 0.0 and kept.action == "held" and "not comparable" in kept.reason
    assert guard_verdict(spec, frame, x, NEW, x, NEW, optimistic).action == "rollback"      # against the claim: short
    # Clearly worse than the previous champion is rolled back either way.
    worse = logs(spec, "useless")
    wx = worse["x"].to_numpy()
    assert guard_verdict(spec, worse, wx, NEW, wx, PREVIOUS, optimistic, claim_comparable=False).action == "rollback"


def test_the_guard_judges_with_the_widened_interval_even_where_promotions_use_the_percentile_one(spec):
    # A rollback rests on the upper bound, which the percentile interval alone puts too low when conversions are
    # rare (tests/test_ope.py::test_doubly_robust_intervals_hold_the_truth_when_conversions_are_rare_and_few_rows_explored).
    percentile = dataclasses.replace(spec, gates=dataclasses.replace(spec.gates, value_interval="bootstrap"))
    frame = logs(percentile, "helpful", n=1200, seed=3)
    x = frame["x"].to_numpy()
    verdict = guard_verdict(percentile, frame, x, NEW, x, PREVIOUS, CLAIM)
    logged = ope.logged_rows(frame, percentile)
    p_new, p_previous = positive_probability(x, NEW, percentile), positive_probability(x, PREVIOUS, percentile)
    settings = estimate_settings(percentile.gates, percentile.training.seed)
    widened = ope.value_difference(logged, p_new, p_previous, "dr", **(settings | {"widen": True}))
    narrow = ope.value_difference(logged, p_new, p_previous, "dr", **(settings | {"widen": False}))
    assert (verdict.gain.low, verdict.gain.high) == (widened.low, widened.high)
    assert widened.high - widened.low > narrow.high - narrow.low    # the widening matters on these logs
    assert "widened to the model-based interval" in verdict.reason
