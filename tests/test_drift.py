"""models.drift with real Evidently (no mocks) on synthetic lead windows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.spec import load_specs
from models.drift import DriftResult, _detect, detect_drift

SPEC = load_specs(Path(__file__).resolve().parents[1] / "data" / "specs")["lead_scoring"]
SOURCES = ["website_form", "trade_fair", "referral", "cold_outreach", "partner"]
INDUSTRIES = ["manufacturing", "logistics", "retail", "it_services", "construction", "healthcare"]
REGIONS = ["nord", "sued", "west", "ost", "dach_other"]


def leads(n: int, seed: int, *, size_factor: float = 1.0, pages_shift: float = 0.0,
          new_source_share: float = 0.0, score_shift: float = 0.0, positives: int | None = None,
          with_score: bool = True) -> pl.DataFrame:
    """A window of n leads; by default every window is drawn from the same distributions."""
    rng = np.random.default_rng(seed)
    source = rng.choice(SOURCES, n, p=[0.4, 0.15, 0.15, 0.2, 0.1]).astype(object)
    source[: int(round(new_source_share * n))] = "webinar"  # a lead source the reference never saw
    frame = pl.DataFrame({
        "source": pl.Series(source.tolist(), dtype=pl.String),
        "industry": rng.choice(INDUSTRIES, n).tolist(),
        "region": rng.choice(REGIONS, n).tolist(),
        "company_size": rng.lognormal(4.0, 1.0, n) * size_factor,
        "pages_visited": rng.poisson(5.0, n) + pages_shift,
        "email_opens": rng.poisson(2.0, n).astype(np.float64),
        "requested_demo": rng.random(n) < 0.2,
    }).with_columns(pl.col("pages_visited").cast(pl.Float64))
    if with_score:
        frame = frame.with_columns(score=pl.Series(np.clip(rng.beta(2.0, 5.0, n) + score_shift, 0.0, 1.0)))
    if positives is not None:  # exactly this many positive outcomes, shuffled
        outcome = np.zeros(n, dtype=bool)
        outcome[:positives] = True
        frame = frame.with_columns(outcome=pl.Series(rng.permutation(outcome)))
    return frame


def test_identical_distributions_no_drift():
    result = detect_drift(leads(3000, 1, positives=900), leads(3000, 2, positives=930), SPEC)
    assert isinstance(result, DriftResult)
    assert result.drifted_columns == ()
    assert result.drifted_share == 0.0
    assert set(result.column_scores) == set(SPEC.feature_names)
    assert all(0.0 <= s < SPEC.drift.threshold for s in result.column_scores.values())
    assert result.score_distance is not None and result.score_distance < SPEC.drift.score_threshold
    assert not result.score_drifted
    assert result.outcome_rate_reference == pytest.approx(0.30)
    assert result.outcome_rate_current == pytest.approx(0.31)
    assert not result.outcome_rate_drifted
    assert not result.drift_detected
    assert (result.reference_rows, result.current_rows) == (3000, 3000)


def test_shifted_numerics_and_new_category_are_drift():
    # 2% new source: too few rows for Jensen-Shannon to cross 0.1 on its own, still drift.
    reference = leads(2000, 1)
    current = leads(2000, 2, size_factor=1.5, pages_shift=2.0, new_source_share=0.02)
    result = detect_drift(reference, current, SPEC)
    assert result.drifted_columns == ("source", "company_size", "pages_visited")
    assert result.column_scores["company_size"] >= SPEC.drift.threshold
    assert result.column_scores["pages_visited"] >= SPEC.drift.threshold
    assert result.column_scores["source"] < SPEC.drift.threshold  # flagged by the new value, not the distance
    assert result.drifted_share == pytest.approx(3 / 7)
    assert result.drift_detected
    assert not result.score_drifted


def test_drifted_share_below_spec_share_is_not_drift():
    spec = dataclasses.replace(SPEC, drift=dataclasses.replace(SPEC.drift, drift_share=0.5))
    result = detect_drift(leads(2000, 1), leads(2000, 2, size_factor=1.5, new_source_share=0.2), spec)
    assert result.drifted_columns == ("source", "company_size")
    assert result.column_scores["source"] >= spec.drift.threshold  # 20 % new source: the distance sees it too
    assert result.drifted_share == pytest.approx(2 / 7) and 2 / 7 < spec.drift.drift_share
    assert not result.drift_detected
    assert detect_drift(leads(2000, 1), leads(2000, 2, size_factor=1.5, new_source_share=0.2), SPEC).drift_detected


def test_score_shift_detected():
    result = detect_drift(leads(2000, 1), leads(2000, 2, score_shift=0.1), SPEC)
    assert result.drifted_columns == ()
    assert result.score_distance is not None and result.score_distance >= SPEC.drift.score_threshold
    assert result.score_drifted
    assert result.drift_detected


def test_no_score_column():
    result = detect_drift(leads(500, 1, with_score=False), leads(500, 2, with_score=False), SPEC)
    assert result.score_distance is None and not result.score_drifted
    assert result.outcome_rate_reference is None and result.outcome_rate_current is None
    assert "score_distance" not in result.summary()
    with pytest.raises(ValueError, match="'score'.*reference"):
        detect_drift(leads(500, 1, with_score=False), leads(500, 2), SPEC)


def test_outcome_rate_beyond_tolerance_detected():
    result, snapshot = _detect(leads(2000, 1, positives=600), leads(2000, 2, positives=800), SPEC)
    assert (result.outcome_rate_reference, result.outcome_rate_current) == (pytest.approx(0.3), pytest.approx(0.4))
    assert result.outcome_rate_drifted
    assert result.drift_detected
    assert result.drifted_columns == () and not result.score_drifted
    # the outcome is in the Evidently report too, so people see it
    drift_columns = [m["config"]["column"] for m in snapshot.dict()["metrics"]
                     if m["config"]["type"] == "evidently:metric_v2:ValueDrift"]
    assert "outcome" in drift_columns


def test_outcome_rate_within_tolerance_not_detected():
    result = detect_drift(leads(2000, 1, positives=600), leads(2000, 2, positives=680), SPEC)  # +0.04 < 0.05
    assert result.outcome_rate_current == pytest.approx(0.34)
    assert not result.outcome_rate_drifted
    assert not result.drift_detected


def test_unlabelled_outcomes_are_ignored():
    current = leads(2000, 2, positives=600).with_columns(
        outcome=pl.when(pl.int_range(pl.len()) < 1000).then(pl.col("outcome")).otherwise(None))
    expected = current["outcome"].drop_nulls().mean()
    result = detect_drift(leads(2000, 1, positives=600), current, SPEC)
    assert result.outcome_rate_current == pytest.approx(expected)
    current_unlabelled = current.with_columns(outcome=pl.lit(None, dtype=pl.Boolean))
    result = detect_drift(leads(2000, 1, positives=600), current_unlabelled, SPEC)
    assert result.outcome_rate_current is None and not result.outcome_rate_drifted


@pytest.mark.parametrize("window", ["reference", "current"])
def test_missing_feature_column_names_it(window):
    frames = {"reference": leads(300, 1), "current": leads(300, 2)}
    frames[window] = frames[window].drop("email_opens")
    with pytest.raises(ValueError, match=rf"email_opens.*{window}"):
        detect_drift(frames["reference"], frames["current"], SPEC)


def test_empty_window_is_an_error():
    with pytest.raises(ValueError, match="current window is empty"):
        detect_drift(leads(300, 1), leads(300, 2).clear(), SPEC)
    with pytest.raises(ValueError, match="reference window is empty"):
        detect_drift(pl.DataFrame(), leads(300, 2), SPEC)


def test_html_written_when_requested(tmp_path):
    html = tmp_path / "reports" / "week_07" / "drift.html"
    result = detect_drift(leads(500, 1, positives=150), leads(500, 2, positives=160), SPEC, html_path=html)
    assert html.is_file() and html.stat().st_size > 10_000
    assert "<html" in html.read_text(encoding="utf-8")[:2000].lower()
    assert isinstance(result, DriftResult)


def test_summary_is_flat_and_loggable():
    summary = detect_drift(leads(2000, 1, positives=600), leads(2000, 2, positives=800), SPEC).summary()
    assert all(isinstance(v, (int, float, str, bool)) for v in summary.values())
    assert summary["drift_detected"] is True and summary["outcome_rate_drifted"] is True
    assert summary["outcome_rate_change"] == pytest.approx(0.1)
    assert {f"drift_score_{name}" for name in SPEC.feature_names} <= set(summary)
    assert summary["reference_rows"] == 2000


@pytest.mark.parametrize("n", [300, 5000])
def test_method_fixed_regardless_of_sample_size(n):
    _, snapshot = _detect(leads(n, 1, positives=n // 3), leads(n, 2, positives=n // 3), SPEC)
    snap = snapshot.dict()
    drift_metrics = {m["id"]: m["config"] for m in snap["metrics"]
                     if m["config"]["type"] == "evidently:metric_v2:ValueDrift"}
    expected = {name: SPEC.drift.method for name in SPEC.features_of("numeric")}
    expected |= {name: SPEC.drift.categorical_method
                 for name in SPEC.features_of("categorical") + SPEC.features_of("boolean")}
    expected |= {"score": SPEC.drift.method, "outcome": SPEC.drift.categorical_method}
    assert {c["column"]: c["method"] for c in drift_metrics.values()} == expected
    assert {c["column"]: c["threshold"] for c in drift_metrics.values()} == {
        name: (SPEC.drift.score_threshold if name == "score" else SPEC.drift.threshold) for name in expected}
    # the method that actually ran, as Evidently reports it in each column's test
    ran = {drift_metrics[t["metric_config"]["metric_id"]]["column"]: t["description"]
           for t in snap["tests"] if t["metric_config"]["metric_id"] in drift_metrics}
    display = {"wasserstein": "Wasserstein distance (normed)", "jensenshannon": "Jensen-Shannon distance"}
    for column, method in expected.items():
        assert f"The drift detection method is {display[method]}." in ran[column]


def test_evidently_default_would_switch_at_small_samples():
    """Control for the test above: without fixed methods Evidently picks p-value tests at 300 rows."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=["company_size"], categorical_columns=["source"])
    small = [Dataset.from_pandas(leads(300, s).select("company_size", "source").to_pandas(),
                                 data_definition=definition) for s in (1, 2)]
    snap = Report([DataDriftPreset(columns=["company_size", "source"])], include_tests=True).run(*small).dict()
    methods = {m["config"]["column"]: m["config"].get("method") for m in snap["metrics"]
               if m["config"]["type"] == "evidently:metric_v2:ValueDrift"}
    assert methods["company_size"] != SPEC.drift.method
    assert methods["source"] != SPEC.drift.categorical_method
