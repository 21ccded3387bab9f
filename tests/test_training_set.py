"""The label maturity rule and the time-ordered split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from features.training_set import graded_rows, time_split, with_labels

AS_OF = datetime(2026, 3, 2, 2, tzinfo=UTC)


def _actions(rows):
    return pl.DataFrame(rows, schema={"action_id": pl.String, "decided_at": pl.Datetime("us", "UTC")}, orient="row").lazy()


def _outcomes(rows):
    return pl.DataFrame(rows, schema={"action_id": pl.String, "observed_at": pl.Datetime("us", "UTC"),
                                      "outcome": pl.String, "revenue": pl.Float64}, orient="row").lazy()


def test_label_maturity_rule(specs):
    spec = specs["lead_scoring"]            # maturity 30 days; converted positive; converted and lost terminal
    days = lambda n: AS_OF - timedelta(days=n)  # noqa: E731
    actions = _actions([
        ("old_silent", days(40)),           # no outcome, past maturity -> counts as not converted
        ("young_silent", days(10)),         # no outcome yet, still within the window -> no label
        ("young_won", days(10)),            # converted -> positive before maturity
        ("young_lost", days(10)),           # marked lost -> negative before maturity
        ("outcome_later", days(10)),        # its outcome is observed after as_of -> not known yet
        ("changed_mind", days(20)),         # lost, later converted: the latest outcome counts
        ("future", AS_OF + timedelta(days=1)),
    ])
    outcomes = _outcomes([
        ("young_won", days(5), "converted", 1000.0),
        ("young_lost", days(3), "lost", None),
        ("outcome_later", AS_OF + timedelta(hours=1), "converted", 900.0),
        ("changed_mind", days(15), "lost", None),
        ("changed_mind", days(2), "converted", 3000.0),
    ])
    labelled = with_labels(actions, outcomes, spec, AS_OF).collect()
    labels = dict(zip(labelled["action_id"], labelled["label"], strict=True))
    assert labels == {"old_silent": 0, "young_silent": None, "young_won": 1, "young_lost": 0,
                      "outcome_later": None, "changed_mind": 1}


def test_time_split_tests_on_the_most_recent_weeks_and_fits_on_the_oldest(specs):
    spec = specs["reply_acceptance"]        # test_rows 2000, calibration_rows 6000
    start = datetime(2026, 1, 5, 8, tzinfo=UTC)
    n = 20000
    frame = pl.DataFrame({"decided_at": [start + timedelta(minutes=10 * i) for i in range(n)],
                          "label": [i % 2 for i in range(n)]})
    from features.training_set import iso_week_expr

    frame = frame.with_columns(iso_week_expr("decided_at").alias("week"))
    split = time_split(frame, spec)
    assert split.fit["decided_at"].max() < split.calibration["decided_at"].min()
    assert split.calibration["decided_at"].max() < split.test["decided_at"].min()
    assert split.fit.height + split.calibration.height + split.test.height == n
    assert split.test.height >= spec.training.test_rows
    assert split.calibration.height == spec.training.calibration_rows
    # The test slice is whole weeks: no week is split between test and the rest.
    assert set(split.test["week"]).isdisjoint(set(split.fit["week"]) | set(split.calibration["week"]))


def test_graded_outcomes_map_to_grades_as_the_spec_says(specs):
    spec = specs["reply_acceptance"]         # maturity 3 days; edited = "share_kept", default 0.5

    def days(n: int) -> datetime:
        return AS_OF - timedelta(days=n)

    names = ["accepted", "edited_kept", "edited_unknown", "rejected", "resolved", "complained", "recontacted",
             "audit_pass", "silent_old", "silent_young", "edited_then_audited"]
    actions = _actions([(n, days(5 if n != "silent_young" else 1)) for n in names])
    outcomes = pl.DataFrame(
        [("accepted", days(4), "accepted", None), ("edited_kept", days(4), "edited", 0.8),
         ("edited_unknown", days(4), "edited", None), ("rejected", days(4), "rejected", None),
         ("resolved", days(4), "resolved", None), ("complained", days(4), "complained", None),
         ("recontacted", days(4), "recontacted", None), ("audit_pass", days(4), "audit_pass", None),
         ("edited_then_audited", days(4), "edited", 0.3), ("edited_then_audited", days(2), "audit_pass", None)],
        schema={"action_id": pl.String, "observed_at": pl.Datetime("us", "UTC"), "outcome": pl.String,
                "share_kept": pl.Float64}, orient="row").with_columns(pl.lit(None, pl.Float64).alias("revenue")).lazy()
    labelled = with_labels(actions, outcomes, spec, AS_OF).collect()
    grades = dict(zip(labelled["action_id"], labelled["grade"], strict=True))
    assert grades == {"accepted": 1.0, "edited_kept": 0.8, "edited_unknown": spec.outcomes.share_kept_default,
                      "rejected": 0.0, "resolved": 1.0, "complained": 0.0, "recontacted": 0.5, "audit_pass": 1.0,
                      "silent_old": 0.0, "silent_young": None, "edited_then_audited": 1.0}
    # The binary label is unchanged: only positive outcomes are 1.
    labels = dict(zip(labelled["action_id"], labelled["label"], strict=True))
    assert labels["edited_kept"] == 0 and labels["accepted"] == 1 and labels["silent_young"] is None
    # A spec without grades: the grade is the label.
    lead = with_labels(actions, outcomes, specs["lead_scoring"], AS_OF).collect()
    assert lead["grade"].to_list() == lead["label"].cast(pl.Float64).to_list()


def test_a_fractional_grade_becomes_two_weighted_rows():
    frame = pl.DataFrame({"action_id": ["a", "b", "c"], "grade": [1.0, 0.25, 0.0], "label": [1, 0, 0]})
    rows, weights = graded_rows(frame)
    got = sorted(zip(rows["action_id"], rows["label"], weights, strict=True))
    assert got == [("a", 1, 1.0), ("b", 0, 0.75), ("b", 1, 0.25), ("c", 0, 1.0)]
    binary = frame.with_columns(pl.col("label").cast(pl.Float64).alias("grade"))
    same, none = graded_rows(binary)
    assert none is None and same.equals(binary)        # nothing graded: the rows as they are, unweighted
