"""The pattern report: where the loop is weak, per segment, now against the champion's training window.

For every value of each column the spec's ``[patterns] segments`` names (lead ``source``; reply
``intent`` and ``template_id``, each column on its own, not crossed), the positive-outcome rate at
equal label age (``outcome`` from features/windows.py: positive within the same horizon in both
windows) now and in the reference, and the change. ``rate_of = "positive_decision"`` measures only
rows that took the positive decision (conversion per proposed meeting: what the automation achieves
when it acts); ``"all"`` measures every labelled row (draft acceptance, which a reviewed draft shows
exactly and an auto-sent one through the customer's follow-up and the audit).

**Reference of a segment.** Its own rows in the reference window when it has at least ``min_rows``
labelled ones there; otherwise (a new lead source, a new template) the whole reference window: a new
segment must do as well as the average segment did.

**Standardised to today's rows.** The reference was mostly decided by an earlier policy, and a
policy that acts on other rows changes a segment's rate by itself (a model that proposes meetings to
more, colder website leads converts fewer per meeting). When both windows carry the champion's
``expected`` probability of each row's outcome (``with_expected``), the reference rate is multiplied
by (mean expected now / mean expected in the reference) of the segment: what the reference would show
on today's rows. Only a fall the champion did not expect for these rows is flagged. The factor shows
as ``mix`` in the report; the interval treats it as known.

**Intervals.** The rate: Wilson score interval. The change (now - reference): Newcombe's hybrid score
interval (method 10 of Newcombe 1998, built from the two Wilson intervals), which stays inside
[-1, 1] and behaves for rates near 0 or 1 where the Wald interval does not. Both treat rows as
independent: a shock that moves a whole week (an outage, a campaign) is not in them.

**Flag rule.** A segment is tested when it has at least ``min_rows`` labelled rows now. It is flagged
when its rate's upper bound is below ``floor`` (clearly below the floor) or its change's upper bound
is below ``-max_drop`` (clearly fell by more than max_drop). Each of these one-sided tests runs at
``alpha / (tests * testing_horizon_weeks)``: Bonferroni over all tests of the report (tested segments
times the criteria the spec sets) and over the weekly reports of the horizon, as the gates do. A report
runs every week and a flag holds its segment until a person clears it, so the bound that matters is per
horizon: over ``testing_horizon_weeks`` consecutive reports, a segment that is in fact fine is flagged
with probability at most about ``alpha`` (Newcombe's interval is approximate; tests/test_patterns.py
measures 0.13 at alpha 0.10 with every test on its null). Per report alone a tenth of the weeks could
hold a fine segment: on the benchmark's seed 7, week 8's leads converted within 7 days at 1.6 % against
2.2-2.8 % in the weeks around it, in every source (chance: the simulator's draws of when a lead closes),
and the naive loop's report held its website leads for good.
The intervals shown are two-sided at ``1 - 2 * alpha / (tests * testing_horizon_weeks)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl

from features.spec import ModelSpec
from models.decision_aware import outcome_probability

OUTCOME = "outcome"
EXPECTED = "expected"


def wilson(positives: np.ndarray, rows: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of positives/rows (NaN where rows is 0)."""
    x, n = np.asarray(positives, float), np.asarray(rows, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = x / n
        denominator = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denominator
        half = z / denominator * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def newcombe(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval of p1 - p2 (method 10), from the two Wilson intervals."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = np.asarray(x1, float) / np.asarray(n1, float), np.asarray(x2, float) / np.asarray(n2, float)
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class SegmentRate:
    column: str
    value: str
    rows: int                      # labelled rows now (of the measured decision)
    positives: int
    rate: float | None
    rate_low: float | None
    rate_high: float | None
    reference_rows: int
    reference_rate: float | None
    reference: str                 # "segment" or "all segments" (too few rows of its own)
    change: float | None
    change_low: float | None
    change_high: float | None
    tested: bool
    flagged: bool
    reasons: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.column}={self.value}"

    def row(self) -> dict[str, Any]:
        def interval(low: float | None, high: float | None) -> str:
            return "-" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"

        return {"segment": self.key, "rows": self.rows, "rate": self.rate, "interval": interval(self.rate_low, self.rate_high),
                "reference_rate": self.reference_rate, "reference_rows": self.reference_rows, "reference": self.reference,
                "change": self.change, "change_interval": interval(self.change_low, self.change_high),
                "flagged": self.flagged, "why": "; ".join(self.reasons) or ("" if self.tested else "too few rows to test")}


@dataclass(frozen=True)
class PatternReport:
    segments: tuple[SegmentRate, ...]
    tests: int
    one_sided_alpha: float
    rate_of: str

    @property
    def flagged(self) -> tuple[SegmentRate, ...]:
        return tuple(s for s in self.segments if s.flagged)

    @property
    def level(self) -> float:
        """Two-sided level of the intervals shown."""
        return 1 - 2 * self.one_sided_alpha

    def metrics(self) -> dict[str, float]:
        return {"patterns_segments": float(len(self.segments)), "patterns_tested": float(sum(s.tested for s in self.segments)),
                "patterns_flagged": float(len(self.flagged)), "patterns_one_sided_alpha": self.one_sided_alpha}


def _measured(frame: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    labelled = frame.filter(pl.col(OUTCOME).is_not_null())
    if spec.patterns.rate_of == "positive_decision":
        labelled = labelled.filter(pl.col("decision") == spec.positive_decision)
    return labelled


def _counts(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Rows, positives and the sum of the champion's expected probabilities (0 without them) per segment value."""
    empty = pl.DataFrame(schema={"column": pl.String, "value": pl.String, "rows": pl.Int64, "positives": pl.Int64,
                                 "expected": pl.Float64})
    expected = pl.col(EXPECTED).sum() if EXPECTED in frame.columns else pl.lit(0.0)
    parts = [frame.filter(pl.col(c).is_not_null())
             .group_by(pl.col(c).cast(pl.String).alias("value"))
             .agg(pl.len().cast(pl.Int64).alias("rows"), pl.col(OUTCOME).cast(pl.Int64).sum().alias("positives"),
                  expected.cast(pl.Float64).alias("expected"))
             .select(pl.lit(c).alias("column"), "value", "rows", "positives", "expected") for c in columns]
    return pl.concat([empty, *parts])


def with_expected(frame: pl.DataFrame, estimator: Any, spec: ModelSpec) -> pl.DataFrame:
    """The window with the champion's P(positive outcome | features, logged decision) per row, as ``expected``."""
    if frame.is_empty():
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(EXPECTED))
    return frame.with_columns(pl.Series(EXPECTED, outcome_probability(estimator, frame, spec), dtype=pl.Float64))


def pattern_report(reference: pl.DataFrame, current: pl.DataFrame, spec: ModelSpec) -> PatternReport:
    """Rates per segment now against the reference, intervals and flags (see the module docstring).

    Both frames are action rows with the segment columns, ``decision`` and ``outcome`` (positive at the
    report's label age; null while too young, such rows are left out).
    """
    config = spec.patterns
    columns = config.segments
    ref, now = _measured(reference, spec), _measured(current, spec)
    overall_rows, overall_positives = ref.height, int(ref.get_column(OUTCOME).cast(pl.Int64).sum() or 0)
    standardised = EXPECTED in ref.columns and EXPECTED in now.columns
    overall_expected = float(ref.get_column(EXPECTED).sum() or 0.0) if standardised else 0.0
    joined = (_counts(now, columns)
              .join(_counts(ref, columns).rename({"rows": "ref_rows", "positives": "ref_positives", "expected": "ref_expected"}),
                    on=["column", "value"], how="left")
              .with_columns(pl.col("ref_rows", "ref_positives", "ref_expected").fill_null(0))
              .with_columns(own=pl.col("ref_rows") >= config.min_rows)
              .with_columns(base_rows=pl.when("own").then("ref_rows").otherwise(overall_rows),
                            base_positives=pl.when("own").then("ref_positives").otherwise(overall_positives),
                            base_expected=pl.when("own").then("ref_expected").otherwise(overall_expected),
                            tested=pl.col("rows") >= config.min_rows))
    # The policy's own change of whom it acts on moves a segment's rate (a model that proposes meetings to more,
    # colder website leads converts fewer per meeting). With the champion's expected probabilities the reference
    # is standardised to today's rows: its rate times (expected rate now / expected rate then), so only a change
    # the champion did not expect for these rows counts.
    mix = (pl.when(pl.col("base_expected") > 0)
           .then((pl.col("expected") / pl.col("rows")) / (pl.col("base_expected") / pl.col("base_rows")))
           .otherwise(1.0)) if standardised else pl.lit(1.0)
    joined = joined.with_columns(mix.alias("mix")).with_columns(
        base_positives=pl.min_horizontal(pl.col("base_positives") * pl.col("mix"), pl.col("base_rows").cast(pl.Float64)))
    criteria = (config.floor is not None) + (config.max_drop is not None)
    tests = int(joined.get_column("tested").sum()) * criteria
    alpha = config.alpha / max(tests, 1) / config.testing_horizon_weeks
    z = NormalDist().inv_cdf(1 - alpha)
    x1, n1 = joined.get_column("positives").to_numpy(), joined.get_column("rows").to_numpy()
    x2, n2 = joined.get_column("base_positives").to_numpy(), joined.get_column("base_rows").to_numpy()
    rate_low, rate_high = wilson(x1, n1, z)
    change_low, change_high = newcombe(x1, n1, x2, n2, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate, base_rate = x1 / n1, x2 / n2
    segments = []
    for i, row in enumerate(joined.iter_rows(named=True)):   # one per segment value: a handful, not per action
        reasons = []
        if row["tested"] and config.floor is not None and rate_high[i] < config.floor:
            reasons.append(f"rate {rate[i]:.3f} (upper bound {rate_high[i]:.3f}) below the floor {config.floor:g}")
        if row["tested"] and config.max_drop is not None and change_high[i] < -config.max_drop:
            reasons.append(f"fell by {-(rate[i] - base_rate[i]):.3f} (at least {-change_high[i]:.3f}) from "
                           f"{base_rate[i]:.3f}, more than max_drop {config.max_drop:g}")
        segments.append(SegmentRate(
            row["column"], row["value"], int(row["rows"]), int(row["positives"]), _finite(rate[i]), _finite(rate_low[i]),
            _finite(rate_high[i]), int(row["base_rows"]), _finite(base_rate[i]),
            ("segment" if row["own"] else "all segments") + (f", mix x{row['mix']:.2f}" if standardised else ""),
            _finite(rate[i] - base_rate[i]), _finite(change_low[i]), _finite(change_high[i]), bool(row["tested"]),
            bool(reasons), tuple(reasons)))
    segments.sort(key=lambda s: (not s.flagged, s.column, s.change if s.change is not None else 0.0, s.value))
    return PatternReport(tuple(segments), tests, alpha, config.rate_of)


def run_patterns(store, registry, spec: ModelSpec, as_of: datetime) -> dict[str, Any]:
    """The weekly report for the current champion and, with ``safe_mode``, the flagged segments held.

    Returns what the monitor's artifact and MLflow run show: per-segment rows, the flags, the segments
    newly held, all held ones and those among them no longer flagged (a person may clear them).
    """
    from features.clock import iso_week
    from features.safe_mode import Segment, active, enter
    from features.windows import pattern_windows
    from models.registry import CHAMPION

    config = spec.patterns
    if not config.segments:
        return {"status": "off", "reason": "the spec names no [patterns] segments"}
    champion = registry.version_by_alias(spec.name, CHAMPION)
    if champion is None or not champion.tags.get("as_of"):
        return {"status": "no_champion", "reason": "no champion yet: no training window to compare with"}
    reference_end = datetime.fromisoformat(champion.tags["as_of"])
    reference, current, (start, end) = pattern_windows(store, spec, as_of, reference_end)
    try:
        estimator = registry.load(spec.name, str(champion.version)).estimator
        reference, current = with_expected(reference, estimator, spec), with_expected(current, estimator, spec)
        standardised = "to the champion's expected rates on today's rows"
    except Exception as exc:  # noqa: BLE001 - a monitor reports what it can: the raw rates, and why not standardised
        standardised = f"not standardised: champion version {champion.version} did not load ({type(exc).__name__}: {exc})"
    report = pattern_report(reference, current, spec)
    entered = []
    if config.safe_mode and report.flagged:
        entered = enter(store, spec.name, [Segment(s.column, s.value, "; ".join(s.reasons)) for s in report.flagged],
                        as_of, week=iso_week(as_of))
    held = active(store, spec.name)
    flagged = {s.key for s in report.flagged}
    tested = {s.key for s in report.segments if s.tested}
    held_keys = [f"{c}={v}" for c, v in held.select("column", "value").rows()]
    return {"status": "checked", "champion_version": str(champion.version), "rate_of": config.rate_of,
            "window": [start.isoformat(), end.isoformat()],
            "reference": [(reference_end - timedelta(days=28)).isoformat(), reference_end.isoformat()],
            "standardised": standardised, "level": report.level, "tests": report.tests, "one_sided_alpha": report.one_sided_alpha,
            "segments": [s.row() for s in report.segments], "flagged": sorted(flagged), "safe_mode": config.safe_mode,
            "entered": [s.key for s in entered], "held": held_keys,
            "recovered": [k for k in held_keys if k in tested and k not in flagged], "metrics": report.metrics()}
