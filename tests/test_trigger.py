"""models.trigger: weekly windows, k-of-n, KPI drop and the self-caused shift, on constructed data
with known answers (the expected figures are worked out by hand in the comments). Real Evidently."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from models.trigger import (assign_windows, evaluate_trigger, policy_shift, policy_table, trigger_decision,
                            window_bounds)
from tests.test_drift import SPEC, leads

AS_OF = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
# A new lead source and more pages visited: 2 of 7 features, beyond the spec's drift_share 0.15.
DRIFTED = {"new_source_share": 0.2, "pages_shift": 3.0}


def actions(n: int, seed: int, start: datetime, *, version: str = "1", threshold: float = 0.5,
            meeting_share: float = 0.2, meeting_rate: float | None = 0.5, nurture_rate: float | None = 0.1,
            **drift) -> pl.DataFrame:
    """n leads decided evenly inside [start, start + 7d) by one policy, with exact positive counts per decision.

    A rate of None leaves that decision's outcomes unlabelled (too young)."""
    meetings = round(n * meeting_share)
    decision = ["propose_meeting"] * meetings + ["nurture"] * (n - meetings)

    def outcomes(count: int, rate: float | None) -> list[bool | None]:
        hits = 0 if rate is None else round(count * rate)
        return [None] * count if rate is None else [True] * hits + [False] * (count - hits)

    step = WEEK / n
    return leads(n, seed, **drift).with_columns(
        decision=pl.Series(decision),
        outcome=pl.Series(outcomes(meetings, meeting_rate) + outcomes(n - meetings, nurture_rate), dtype=pl.Boolean),
        decided_at=pl.Series([start + (i + 0.5) * step for i in range(n)], dtype=pl.Datetime("us", "UTC")),
        model_version=pl.lit(version), threshold=pl.lit(threshold))


def reference(n: int = 2000) -> pl.DataFrame:
    return actions(n, 1, AS_OF - 8 * WEEK)


def week(i: int, seed: int, **kwargs) -> pl.DataFrame:
    """Window i before AS_OF (0 = latest)."""
    return actions(kwargs.pop("n", 600), seed, AS_OF - (i + 1) * WEEK, **kwargs)


# ---- windows ------------------------------------------------------------------------------------

def test_windows_are_whole_weeks_before_as_of_and_the_boundaries_fall_as_documented():
    times = [AS_OF, AS_OF - timedelta(microseconds=1), AS_OF - WEEK, AS_OF - WEEK - timedelta(microseconds=1),
             AS_OF - 3 * WEEK, AS_OF - 3 * WEEK - timedelta(seconds=1)]
    frame = pl.DataFrame({"decided_at": pl.Series(times, dtype=pl.Datetime("us", "UTC")), "i": range(len(times))})
    got = dict(assign_windows(frame, AS_OF, 3).select("i", "window").iter_rows())
    # as_of itself is after the window [.., as_of); exactly 7 days before is the start of window 0;
    # exactly 21 days before is the start of window 2; a second earlier is outside the three weeks.
    assert got == {1: 0, 2: 0, 3: 1, 4: 2}
    assert window_bounds(AS_OF, 2) == [(AS_OF - WEEK, AS_OF), (AS_OF - 2 * WEEK, AS_OF - WEEK)]


# ---- k of n --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "kpi", "expected"), [
    ((True, True, False), False, True),      # 2 of 3, latest included
    ((True, False, True), False, True),      # 2 of 3 with a gap: still 2 of the last 3
    ((True, False, False), False, False),    # one noisy week
    ((False, True, True), False, False),     # the latest window is calm: the drift is over
    ((True, False, False), True, True),      # drift + KPI drop
    ((False, False, False), True, False),    # a KPI drop alone is not drift
])
def test_k_of_n_needs_the_latest_window_and_k_windows_or_a_kpi_drop(flags, kpi, expected):
    decision = trigger_decision(flags, kpi, SPEC, AS_OF)
    assert decision.triggered is expected
    assert decision.drifted_windows == sum(flags) and decision.latest_drifted is flags[0]


def test_k_and_n_come_from_the_spec():
    strict = dataclasses.replace(SPEC, drift=dataclasses.replace(SPEC.drift, trigger_k=3, trigger_n=4))
    assert not trigger_decision((True, True, False, False), False, strict, AS_OF).triggered
    assert trigger_decision((True, True, False, True), False, strict, AS_OF).triggered
    with pytest.raises(ValueError, match="trigger_n is 4"):
        trigger_decision((True, True, True), False, strict, AS_OF)


def test_a_retraining_within_the_cooldown_suppresses_the_trigger_but_last_weeks_does_not():
    recent = trigger_decision((True, True, True), False, SPEC, AS_OF, last_trained=AS_OF - timedelta(days=1))
    assert not recent.triggered and recent.suppressed and "suppressed" in recent.reason
    weekly = trigger_decision((True, True, True), False, SPEC, AS_OF, last_trained=AS_OF - WEEK + timedelta(minutes=5))
    assert weekly.triggered and not weekly.suppressed


# ---- the self-caused shift -----------------------------------------------------------------------

def test_a_new_threshold_that_only_moves_the_decision_mix_is_self_caused():
    ref = reference(1000)   # 200 meetings converting 50 %, 800 nurtured converting 10 %: rate 0.18
    cur = week(0, 2, n=1000, version="2", threshold=0.3, meeting_share=0.5)  # 500 / 500 at the same rates: 0.30
    shift = policy_shift(ref, cur, SPEC)
    assert shift.policy_changed
    assert shift.outcome_rate_reference == pytest.approx(0.18) and shift.outcome_rate_current == pytest.approx(0.30)
    # new mix at old rates: (0.5 - 0.2) * 0.5 + (0.5 - 0.8) * 0.1 = 0.12, the whole change
    assert shift.self_caused == pytest.approx(0.12) and shift.outside == pytest.approx(0.0, abs=1e-12)
    assert (shift.positive_share_reference, shift.positive_share_current) == (pytest.approx(0.2), pytest.approx(0.5))


def test_the_same_mix_change_under_an_unchanged_policy_is_outside():
    shift = policy_shift(reference(1000), week(0, 2, n=1000, meeting_share=0.5), SPEC)
    assert not shift.policy_changed
    assert shift.self_caused == 0.0 and shift.outside == pytest.approx(0.12)


def test_rates_that_fall_within_each_decision_are_outside_even_when_the_policy_changed():
    cur = week(0, 2, n=1000, version="2", threshold=0.3, meeting_share=0.5, meeting_rate=0.3)
    shift = policy_shift(reference(1000), cur, SPEC)
    # current rate 0.5 * 0.3 + 0.5 * 0.1 = 0.20; change 0.02; self-caused 0.12; outside 0.02 - 0.12 = -0.10
    assert shift.outcome_rate_current == pytest.approx(0.20)
    assert shift.self_caused == pytest.approx(0.12) and shift.outside == pytest.approx(-0.10)


def test_a_decision_the_reference_never_took_cannot_be_attributed_to_the_loop():
    ref = reference(1000).with_columns(decision=pl.lit("nurture"), model_version=pl.lit("rule"))
    assert policy_shift(ref, ref, SPEC).reference_policies == ("rule @ 0.5",)
    shift = policy_shift(ref, week(0, 2, n=1000, version="1"), SPEC)
    assert shift.policy_changed and shift.self_caused is None
    assert shift.outside == pytest.approx(shift.outcome_rate_current - shift.outcome_rate_reference)
    assert "propose_meeting taken on fewer than 200" in shift.note
    # A handful of reference rows gives no reliable old rate either (6 of 1000 is 0.6 %, under 200 rows).
    few = reference(1000).with_columns(decision=pl.when(pl.int_range(pl.len()) < 6).then(pl.lit("propose_meeting"))
                                       .otherwise(pl.lit("nurture")), model_version=pl.lit("rule"))
    assert policy_shift(few, week(0, 2, n=1000, version="1"), SPEC).self_caused is None


def test_a_few_actions_of_another_policy_at_a_window_edge_are_no_policy_change():
    edge = pl.concat([week(0, 2, n=980), week(0, 3, n=20, version="2", threshold=0.3)])  # 2 % by the next policy
    shift = policy_shift(reference(1000), edge, SPEC)
    assert shift.current_policies == ("v1 @ 0.5",) and not shift.policy_changed
    assert policy_shift(reference(1000), pl.concat([week(0, 2, n=900), week(0, 3, n=100, version="2")]),
                        SPEC).policy_changed  # 10 % is a policy change


def test_policy_table_reports_each_policy_version_per_window():
    recent = pl.concat([week(0, 2, n=300, version="2", threshold=0.3, meeting_share=0.5),
                        week(0, 3, n=100, version="1", meeting_share=0.2), week(1, 4, n=200)])
    table = policy_table(reference(500), assign_windows(recent, AS_OF, 3), SPEC)
    got = {(r["window"], r["policy"]): (r["rows"], r["positive_share"]) for r in table.iter_rows(named=True)}
    assert got == {("reference", "v1 @ 0.5"): (500, pytest.approx(0.2)), ("0", "v2 @ 0.3"): (300, pytest.approx(0.5)),
                   ("0", "v1 @ 0.5"): (100, pytest.approx(0.2)), ("1", "v1 @ 0.5"): (200, pytest.approx(0.2))}


# ---- the whole verdict with real Evidently -------------------------------------------------------

def test_a_new_lead_source_in_two_of_three_weeks_triggers():
    recent = pl.concat([week(0, 10, **DRIFTED), week(1, 11), week(2, 12, **DRIFTED)])
    report = evaluate_trigger(reference(), recent, SPEC, AS_OF)
    assert [w.drifted for w in report.windows] == [True, False, True]
    assert "source" in report.latest.drift.drifted_columns
    assert report.decision.triggered and "2 of the last 3" in report.decision.reason


def test_one_noisy_week_does_not_trigger():
    recent = pl.concat([week(0, 10, **DRIFTED), week(1, 11), week(2, 12)])
    report = evaluate_trigger(reference(), recent, SPEC, AS_OF)
    assert [w.drifted for w in report.windows] == [True, False, False]
    assert not report.decision.triggered and not report.kpi.dropped


def test_a_missing_week_counts_as_no_drift_not_as_a_hole():
    recent = pl.concat([week(0, 10, **DRIFTED), week(2, 12, **DRIFTED)])
    report = evaluate_trigger(reference(), recent, SPEC, AS_OF)
    assert [w.rows for w in report.windows] == [600, 0, 600]
    assert report.decision.drifted_windows == 2 and report.decision.triggered


def test_drift_in_the_latest_week_with_a_kpi_drop_triggers():
    # Window 0 is too young to be labelled (as for leads); in window 1 meetings convert 30 % instead
    # of 50 % under the same policy: 0.2 * 0.3 + 0.8 * 0.1 = 0.14 vs 0.18, a drop of 0.04: beyond
    # the KPI tolerance 0.03, short of the outcome-drift tolerance 0.05.
    recent = pl.concat([week(0, 10, **DRIFTED, meeting_rate=None, nurture_rate=None),
                        week(1, 11, n=1000, meeting_rate=0.3), week(2, 12)])
    report = evaluate_trigger(reference(), recent, SPEC, AS_OF)
    assert report.kpi.window == 1 and report.kpi.outside_change == pytest.approx(-0.04)
    assert [w.drifted for w in report.windows] == [True, False, False]
    assert report.kpi.dropped and report.decision.triggered and "KPI drop" in report.decision.reason


def test_an_outcome_shift_the_new_threshold_explains_is_reported_but_does_not_count():
    # A lower threshold gives half the leads a meeting: the conversion rate rises 0.18 -> 0.30,
    # which is beyond the outcome-rate tolerance, but all of it is the new mix at the old rates.
    recent = pl.concat([week(i, 20 + i, version="2", threshold=0.3, meeting_share=0.5) for i in range(3)])
    report = evaluate_trigger(reference(), recent, SPEC, AS_OF)
    latest = report.latest
    assert latest.drift.outcome_rate_drifted                      # the raw comparison sees it
    assert latest.shift.self_caused == pytest.approx(0.12) and not latest.outcome_outside_drifted
    assert [w.drifted for w in report.windows] == [False, False, False] and not report.decision.triggered
    # The same numbers under an unchanged policy are outside drift, in every window: it triggers.
    unchanged = recent.with_columns(model_version=pl.lit("1"), threshold=pl.lit(0.5))
    assert evaluate_trigger(reference(), unchanged, SPEC, AS_OF).decision.triggered
