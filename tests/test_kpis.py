"""Weekly KPIs on small hand-made weeks: every expected figure is worked out by hand below."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from features.kpis import KpiPoint, new_points, weekly_kpis

T = pl.Datetime("us", "UTC")
TUE_W02 = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)     # ISO week 2026-W02: Mon 2026-01-05 .. Sun 2026-01-11 (Berlin)
TUE_W03 = datetime(2026, 1, 13, 10, 0, tzinfo=UTC)
MON_W04 = datetime(2026, 1, 19, 10, 0, tzinfo=UTC)
W02_END = datetime(2026, 1, 11, 23, 0, tzinfo=UTC)     # Monday 00:00 Berlin (CET, UTC+1)
W03_END = datetime(2026, 1, 18, 23, 0, tzinfo=UTC)
W02_INDEX = (date(2026, 1, 5) - date(1970, 1, 5)).days // 7


def frames(actions: list[tuple[str, datetime, str]], outcomes: list[tuple[str, datetime, str]]):
    a = pl.DataFrame(actions, schema={"action_id": pl.String, "decided_at": T, "decision": pl.String}, orient="row")
    o = pl.DataFrame(outcomes, schema={"action_id": pl.String, "observed_at": T, "outcome": pl.String}, orient="row")
    return a.lazy(), o.lazy()


def hours(h: float) -> timedelta:
    return timedelta(hours=h)


def test_reply_kpis_count_outcomes_at_mature_label_age_only(specs):
    spec = specs["reply_acceptance"]   # maturity 3 days; positive: accepted, resolved, audit_pass; escalation: human_review
    actions, outcomes = frames(
        [("a1", TUE_W02, "auto_send"), ("a2", TUE_W02, "auto_send"), ("a3", TUE_W02, "auto_send"),
         ("a4", TUE_W02, "auto_send"), ("a5", TUE_W02, "human_review"), ("a6", TUE_W02, "human_review"),
         ("b1", TUE_W03, "auto_send"), ("b2", TUE_W03, "human_review"),
         ("c1", MON_W04, "auto_send")],                                  # week 04 is not over at as_of
        [("a1", TUE_W02 + hours(6), "resolved"),
         ("a2", TUE_W02 + hours(24), "complained"), ("a2", TUE_W02 + hours(30), "audit_pass"),  # the latest counts
         # a3: no outcome within 3 days -> negative
         ("a4", TUE_W02 + timedelta(days=4), "accepted"),               # too late: after the maturity window
         ("a5", TUE_W02 + hours(2), "accepted"),
         ("a6", TUE_W02 + hours(10), "edited"),
         ("b1", TUE_W03 + hours(12), "resolved")])
    as_of = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)  # W02 over 8.5 days ago (final); W03 over 1.5 days ago

    kpis = weekly_kpis(actions, outcomes, spec, as_of)

    assert kpis["week"].to_list() == ["2026-W02", "2026-W03"]
    w02, w03 = kpis.row(0, named=True), kpis.row(1, named=True)
    assert w02["week_index"] == W02_INDEX and w03["week_index"] == W02_INDEX + 1
    assert w02["week_end"] == W02_END and w03["week_end"] == W03_END
    assert w02["outcomes_final"] and not w03["outcomes_final"]
    # W02: 6 actions, 4 auto-sent, 2 to a person.
    assert (w02["actions"], w02["automated"], w02["labelled"]) == (6, 4, 4)
    assert w02["automation_rate"] == pytest.approx(4 / 6)
    assert w02["escalation_rate"] == pytest.approx(2 / 6)
    # Acceptable auto-sent: a1 (resolved) and a2 (audit pass after a complaint); not a3 (nothing), not a4 (late).
    assert w02["positive_outcome_rate"] == pytest.approx(2 / 4)
    # First terminal outcome within 3 days: a1 6 h, a2 24 h, a5 2 h, a6 10 h -> median of 2, 6, 10, 24.
    assert w02["median_hours_to_outcome"] == pytest.approx(8.0)
    # 2 acceptable x 4 EUR - 2 unacceptable x 40 EUR.
    assert w02["value"] == pytest.approx(2 * 4.0 - 2 * 40.0)
    # W03 is over, its outcomes are not mature: decision figures only.
    assert (w03["actions"], w03["automation_rate"], w03["escalation_rate"]) == (2, 0.5, 0.5)
    assert w03["positive_outcome_rate"] is None and w03["value"] is None and w03["median_hours_to_outcome"] is None
    assert w03["labelled"] is None


def test_lead_value_follows_the_expected_value_objective(specs):
    spec = specs["lead_scoring"]   # maturity 30 days; 2500 EUR per conversion x effect 0.65, 150 EUR per meeting
    actions, outcomes = frames(
        [("m1", TUE_W02, "propose_meeting"), ("m2", TUE_W02, "propose_meeting"), ("m3", TUE_W02, "propose_meeting"),
         ("n1", TUE_W02, "nurture"), ("n2", TUE_W02, "nurture")],
        [("m1", TUE_W02 + timedelta(days=12), "converted"), ("m2", TUE_W02 + timedelta(days=5), "lost"),
         ("n1", TUE_W02 + timedelta(days=20), "converted")])

    before = weekly_kpis(actions, outcomes, spec, W02_END + timedelta(days=29))
    after = weekly_kpis(actions, outcomes, spec, W02_END + timedelta(days=30))

    assert not before["outcomes_final"][0] and before["value"][0] is None
    assert before["automation_rate"][0] == pytest.approx(3 / 5)
    row = after.row(0, named=True)
    assert row["outcomes_final"]
    assert row["escalation_rate"] is None                      # the lead spec names no escalation decision
    assert row["positive_outcome_rate"] == pytest.approx(1 / 3)  # m1 of the three meetings
    assert row["value"] == pytest.approx(1 * 2500.0 * 0.65 - 3 * 150.0)
    # Resolved: m1 after 12 days, m2 after 5, n1 after 20 (the nurtured lead counts for speed, not value).
    assert row["median_hours_to_outcome"] == pytest.approx(12 * 24.0)


def test_a_week_across_the_switch_to_summer_time_ends_at_berlin_midnight(specs):
    spec = specs["lead_scoring"]
    sunday_evening = datetime(2026, 3, 29, 21, 30, tzinfo=UTC)  # 23:30 CEST, still week 13
    actions, outcomes = frames([("x", sunday_evening, "nurture")], [])
    kpis = weekly_kpis(actions, outcomes, spec, datetime(2026, 3, 30, 0, 0, tzinfo=UTC))
    assert kpis["week"].to_list() == ["2026-W13"]
    assert kpis["week_end"][0] == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)


def test_new_points_are_the_final_values_not_logged_yet(specs):
    spec = specs["reply_acceptance"]
    actions, outcomes = frames([("a", TUE_W02, "auto_send"), ("b", TUE_W03, "human_review")],
                               [("a", TUE_W02 + hours(5), "resolved")])
    kpis = weekly_kpis(actions, outcomes, spec, datetime(2026, 1, 20, 12, 0, tzinfo=UTC))
    w02_ms = int(W02_END.timestamp() * 1000)

    points = new_points(kpis, {"automation_rate": {W02_INDEX}})

    keys = {(p.key, p.step) for p in points}
    assert ("automation_rate", W02_INDEX) not in keys                 # already logged
    assert ("automation_rate", W02_INDEX + 1) in keys
    assert ("value", W02_INDEX) in keys and ("value", W02_INDEX + 1) not in keys   # W03 not final
    assert KpiPoint("positive_outcome_rate", 1.0, W02_INDEX, w02_ms) in points
    assert KpiPoint("median_hours_to_outcome", 5.0, W02_INDEX, w02_ms) in points
    logged: dict[str, set[int]] = {"automation_rate": {W02_INDEX}}
    for p in points:
        logged.setdefault(p.key, set()).add(p.step)
    assert new_points(kpis, logged) == []


def test_a_spec_can_only_escalate_with_one_of_its_own_decisions():
    from pathlib import Path

    from features.spec import SpecError, parse_spec

    path = Path(__file__).resolve().parents[1] / "data" / "specs" / "reply_acceptance.toml"
    text = path.read_text()
    assert 'escalation_decision = "human_review"' in text
    with pytest.raises(SpecError, match="escalation_decision must be 'auto_send' or 'human_review'"):
        parse_spec(text.replace('escalation_decision = "human_review"', 'escalation_decision = "call_back"'), path)
