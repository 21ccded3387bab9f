"""The label maturity rule and the time-ordered split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from features.training_set import time_split, with_labels

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
    spec = specs["reply_acceptance"]        # test_rows 2000, calibration_rows 3000
    start = datetime(2026, 1, 5, 8, tzinfo=UTC)
    n = 12000
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
