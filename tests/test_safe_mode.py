"""Safe mode: held segments take the safe decision except a recomputable exploration floor with correct
propensities (off-policy estimates stay right), never into a decision never_to excludes; the table is
append-only and audited; `loop clear` lifts a segment (CLI, real Delta store); batch decisions and the
scoring service follow the table."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from features.safe_mode import Segment, active, enter, history
from features.spec import Exploration, Feature, Objective
from flows.cli import app
from flows.runtime import Runtime
from models import ope
from models.exploration import explore, positive_probability
from models.policy import Policy
from models.safe_decisions import SafeMode, hold

NOW = datetime(2026, 3, 9, 3, tzinfo=UTC)
runner = CliRunner()


def _floor(spec, share: float, seed: int = 21):
    return dataclasses.replace(spec, patterns=dataclasses.replace(spec.patterns, explore_share=share, seed=seed))


def _u(action_id: str, seed: int) -> float:
    """The documented draw, by hand: first 8 hex digits of SHA-256('<seed>:<action_id>') / 16**8."""
    return int(hashlib.sha256(f"{seed}:{action_id}".encode()).hexdigest()[:8], 16) / 16 ** 8


def _logged(spec, scores: np.ndarray, sources: list[str], threshold: float = 0.5) -> pl.DataFrame:
    """Action rows as the policy logs them before safe mode: threshold, exploration, propensity."""
    ids = pl.Series("action_id", [f"act-{i:06d}" for i in range(len(scores))])
    explored = explore(scores, threshold, ids, spec)
    return pl.DataFrame({"action_id": ids, "source": sources, "score": scores, "decision": explored.decisions,
                         "propensity": explored.propensity})


def test_held_rows_take_the_safe_decision_except_the_floor_with_the_propensity_of_what_was_taken(specs):
    spec = _floor(dataclasses.replace(specs["lead_scoring"], exploration=Exploration(share=0.1, band=0.2, seed=3)), 0.2)
    rng = np.random.default_rng(0)
    n = 30_000
    scores = rng.random(n)
    sources = rng.choice(["referral", "website_form"], n).tolist()
    before = _logged(spec, scores, sources)
    after = hold(before, spec, SafeMode(frozenset({("source", "referral")})))

    held = (after["source"] == "referral").to_numpy()
    # Outside the held segment nothing changes.
    assert after.filter(~pl.Series(held)).equals(before.filter(~pl.Series(held)))
    # Inside, a positive decision survives only where the policy took it and the floor draw (seed 21) is below 0.2.
    u = np.array([_u(i, 21) for i in after["action_id"].to_list()])
    was_positive = (before["decision"] == "propose_meeting").to_numpy()
    now_positive = (after["decision"] == "propose_meeting").to_numpy()
    assert (now_positive[held] == (was_positive & (u < 0.2))[held]).all()
    assert abs(now_positive[held & was_positive].mean() - 0.2) < 0.015
    # Propensity: P(policy positive) from its definition, times the floor share.
    p = positive_probability(scores, 0.5, spec) * 0.2
    expected = np.where(now_positive, p, 1.0 - p)
    assert np.allclose(after["propensity"].to_numpy()[held], expected[held])


def test_the_floor_never_takes_a_decision_never_to_excludes(specs):
    spec = _floor(specs["reply_acceptance"], 0.2)       # never_to = ["auto_send"]
    scores = np.random.default_rng(1).random(5_000)
    before = _logged(spec, scores, ["x"] * 5_000, threshold=0.3)
    frame = before.rename({"source": "template_id"}).with_columns(pl.lit("ret_v2").alias("template_id"))
    after = hold(frame, spec, SafeMode(frozenset({("template_id", "ret_v2")})))
    assert (before["decision"] == "auto_send").sum() > 1000
    assert (after["decision"] == "human_review").all() and (after["propensity"] == 1.0).all()


def _prior():
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="prior")


def test_off_policy_estimates_on_safe_mode_logs_recover_the_policy_without_safe_mode(specs):
    """Logs decided with half the rows held (floor 0.3) still estimate the unheld policy's value:
    only because the logged propensities are the held ones."""
    spec = dataclasses.replace(
        specs["lead_scoring"], features=(Feature("x", "numeric"), Feature("source", "categorical", ("a", "b"))),
        objective=Objective(kind="expected_value", value_per_conversion=1000.0, cost_per_action=150.0),
        exploration=Exploration(share=0.2, band=0.2, seed=5))
    spec = _floor(spec, 0.3)
    rng = np.random.default_rng(7)
    n, weeks = 40_000, 8
    x = rng.random(n)
    frame = _logged(spec, x, rng.choice(["a", "b"], n).tolist())
    frame = hold(frame, spec, SafeMode(frozenset({("source", "b")})))
    positive = (frame["decision"] == "propose_meeting").to_numpy()
    p_convert = np.where(positive, 0.1 + 0.6 * x, 0.05 + 0.15 * x)      # the world: meetings help high x most
    frame = frame.with_columns(x=pl.Series(x), label=pl.Series((rng.random(n) < p_convert).astype(np.int8)),
                               week=pl.Series([f"2026-W{10 + w:02d}" for w in np.repeat(np.arange(weeks), n // weeks)]),
                               entity_id=pl.Series([f"e{i}" for i in range(n)]))
    target = positive_probability(x, 0.5, spec)                            # the policy as if nothing were held
    truth = float(np.mean(target * (1000 * (0.1 + 0.6 * x) - 150) + (1 - target) * 1000 * (0.05 + 0.15 * x)))
    logged = ope.logged_rows(frame, spec, model_factory=_prior)   # SNIPS needs no outcome model
    result = ope.estimate(logged, target, "snips")
    assert result.low <= truth <= result.high and abs(result.estimate - truth) < 8
    # With the propensities the policy would have logged without safe mode, the estimate is off.
    unheld = frame.with_columns(propensity=pl.Series(np.where(positive, target, 1 - target)))
    wrong = ope.estimate(ope.logged_rows(unheld, spec, model_factory=_prior), target, "snips")
    assert not wrong.low <= truth <= wrong.high


def test_loop_clear_lifts_a_segment_and_every_change_is_recorded(loop_home):
    runtime = Runtime.from_env()
    store = runtime.store
    entered = enter(store, "lead_scoring", [Segment("source", "lead_marketplace", "fell by 0.06"),
                                            Segment("source", "cold_outreach", "fell by 0.04")], NOW, week="2026-W11")
    assert [s.key for s in entered] == ["source=lead_marketplace", "source=cold_outreach"]
    listed = runner.invoke(app, ["safe-mode", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {(r["column"], r["value"], r["actor"]) for r in json.loads(listed.output)} == {
        ("source", "lead_marketplace", "loop"), ("source", "cold_outreach", "loop")}

    cleared = runner.invoke(app, ["clear", "lead_scoring", "source=lead_marketplace", "--by", "anna",
                                  "--reason", "the marketplace fixed its lead scoring"])
    assert cleared.exit_code == 0, cleared.output
    assert active(store, "lead_scoring").select("column", "value").rows() == [("source", "cold_outreach")]
    events = history(store, "lead_scoring")
    assert events.select("value", "event", "actor").rows() == [
        ("lead_marketplace", "entered", "loop"), ("cold_outreach", "entered", "loop"), ("lead_marketplace", "cleared", "anna")]
    audit = store.scan_audit().filter(pl.col("event").str.starts_with("safe_mode_")).sort("recorded_at").collect()
    assert audit.select("event", "actor").rows()[-1] == ("safe_mode_cleared", "anna")
    assert "source=lead_marketplace: the marketplace fixed its lead scoring" in audit["reasons"].to_list()

    again = runner.invoke(app, ["clear", "lead_scoring", "source=lead_marketplace", "--by", "anna"])
    assert again.exit_code == 1 and "not in safe mode (held: source=cold_outreach)" in again.output
    malformed = runner.invoke(app, ["clear", "lead_scoring", "lead_marketplace", "--by", "anna"])
    assert malformed.exit_code == 1 and "COLUMN=VALUE" in malformed.output
    # A segment held again after being cleared (flagged again) is a new entry.
    assert [s.key for s in enter(store, "lead_scoring", [Segment("source", "lead_marketplace", "again")], NOW)] == [
        "source=lead_marketplace"]
    assert enter(store, "lead_scoring", [Segment("source", "lead_marketplace", "still")], NOW) == []


def _leads(n: int, source: str) -> pl.DataFrame:
    return pl.DataFrame({"entity_ref": [f"lead-{source}-{i}@example.de" for i in range(n)],
                         "decided_at": pl.Series([NOW] * n, dtype=pl.Datetime("us", "UTC")), "source": [source] * n,
                         "industry": ["retail"] * n, "region": ["nord"] * n, "company_size": [40.0] * n,
                         "pages_visited": [3.0] * n, "email_opens": [1.0] * n, "requested_demo": [False] * n})


def test_the_batch_decisions_follow_the_safe_mode_table(loop_home, specs):
    # The cold-start rule proposes a meeting to every referral; without its own exploration here, so the
    # only random decisions are the safe-mode floor's.
    spec = dataclasses.replace(specs["lead_scoring"],
                               exploration=dataclasses.replace(specs["lead_scoring"].exploration, share=0.0, rule_share=None))
    store = Runtime.from_env().store
    enter(store, "lead_scoring", [Segment("source", "referral", "fell")], NOW)
    policy = Policy(spec, None, SafeMode.from_frame(active(store, "lead_scoring")))
    referral = policy.decide(_leads(2000, "referral"), b"k")
    share = spec.patterns.explore_share
    meetings = referral["decision"] == "propose_meeting"
    assert abs(meetings.mean() - share) < 0.015
    assert np.allclose(referral["propensity"].to_numpy(), np.where(meetings.to_numpy(), share, 1 - share))
    trade_fair = policy.decide(_leads(50, "trade_fair"), b"k")
    assert (trade_fair["decision"] == "propose_meeting").all() and (trade_fair["propensity"] == 1.0).all()


def test_the_scoring_service_picks_up_a_held_and_a_cleared_segment_without_a_restart(loop_home, tmp_path, specs):
    from features.safe_mode import clear
    from service.scoring import ScoringService, ServiceSettings

    runtime = Runtime.from_env()
    service = ScoringService(runtime.specs, runtime.store, runtime.registry, b"k", ServiceSettings(wal_dir=tmp_path / "wal"))
    try:
        service.reload_champions()
        assert (service.decide("lead_scoring", _leads(300, "referral"))["decision"] == "propose_meeting").mean() > 0.9

        enter(runtime.store, "lead_scoring", [Segment("source", "referral", "fell")], NOW)
        assert service.reload_champions() == {}                   # no new version, but a new safe mode
        assert service.health.safe_mode["lead_scoring"] == ["source=referral"]
        held = service.decide("lead_scoring", _leads(300, "referral"))
        assert (held["decision"] == "nurture").mean() > 0.9 and held["model_version"].unique().to_list() == ["rule"]

        clear(runtime.store, "lead_scoring", "source", "referral", "anna", "fixed", NOW)
        service.reload_champions()
        # The rule itself explores a few percent of its decisions; held, the referrals were nearly all nurtured.
        assert (service.decide("lead_scoring", _leads(300, "referral"))["decision"] == "propose_meeting").mean() > 0.9
        assert service.health.safe_mode["lead_scoring"] == []
    finally:
        service.wal.close()


@pytest.mark.parametrize(("old", "new", "message"), [
    ('segments = ["source"]', 'segments = ["company_size"]', "segments must be categorical"),
    ('rate_of = "positive_decision"', 'rate_of = "meetings"', "rate_of must be"),
    ("seed = 13", "seed = 11", "seed must differ from"),        # the floor's draws would be exploration's
])
def test_a_spec_with_an_impossible_patterns_section_is_refused(specs, tmp_path, old, new, message):
    from features.spec import SpecError, parse_spec

    text = specs["lead_scoring"].source_text
    assert text.count(old) == 1
    with pytest.raises(SpecError, match=message):
        parse_spec(text.replace(old, new), tmp_path / "bad.toml")
