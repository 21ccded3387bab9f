"""Per-segment calibration with partial pooling, and the thresholds that follow from it.

The global calibration makes scores right on average over all rows; within a segment (an intent of
an e-mail, a lead's source) they can still be systematically high or low, and a precision target
met over all rows can hide a segment far below it (complaints carried by order-status questions).

Rule (the spec's ``[segments]``): for each segment with at least ``min_rows`` labelled rows in the
calibration slice, a logistic recalibration of the global score,
``p = sigmoid(a + b · logit(s))``, is fitted to the grades of its rows (cross-entropy, a weak ridge
pulling towards ``a = 0, b = 1``). The identity ``(0, 1)`` is the global calibration. The fitted
coefficients are shrunk towards it with the segment's pooling weight ``w = n / (n + prior_rows)``:
``a' = w·a``, ``b' = w·b + (1 − w)``. A segment with few rows stays close to the global calibration,
a large one gets its own. Segments below ``min_rows``, and values never seen in training, keep the
global calibration and the global threshold.

Thresholds follow from the recalibrated scores: each calibrated segment gets the spec's objective
applied to its own rows (for replies: the lowest threshold whose Wilson lower bound of graded
acceptance reaches the target *in that segment*); the default threshold is chosen on all rows and,
for a precision target, raised if needed so that the target also holds on the rows of the segments
that decide by it (too few rows may then mean no positive decision for them yet).
The recalibration is part of the registered model (``SegmentCalibrated`` wraps the calibrated
pipeline), so whoever scores with the model scores with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from features.spec import ModelSpec
from models.thresholds import SegmentThresholds, ThresholdChoice, choose_threshold

_EPS = 1e-6
RIDGE = 1.0          # prior strength of the ridge towards (0, 1), in rows: keeps separable segments finite


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_logistic_recalibration(scores: np.ndarray, grades: np.ndarray, ridge: float = RIDGE,
                               iterations: int = 50) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of ``sigmoid(a + b·logit(s))`` against grades in [0, 1], plus
    ``ridge/2 · (a² + (b − 1)²)``; Newton's method (two parameters, a few rows per segment)."""
    x = logit(scores)
    y = np.asarray(grades, float)
    design = np.column_stack([np.ones_like(x), x])
    theta = np.array([0.0, 1.0])
    prior = np.array([0.0, 1.0])
    for _ in range(iterations):
        p = sigmoid(design @ theta)
        gradient = design.T @ (p - y) + ridge * (theta - prior)
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-8:
            break
    return float(theta[0]), float(theta[1])


@dataclass(frozen=True)
class SegmentCalibration:
    column: str
    coefficients: dict[str, tuple[float, float]] = field(default_factory=dict)   # segment -> (a', b') after pooling
    rows: dict[str, int] = field(default_factory=dict)                            # calibration rows per segment
    weights: dict[str, float] = field(default_factory=dict)                       # pooling weight n / (n + prior_rows)

    def apply(self, scores: np.ndarray, segments: pl.Series) -> np.ndarray:
        if not self.coefficients:
            return np.asarray(scores, float)
        names = segments.cast(pl.String)
        a = names.replace_strict({k: v[0] for k, v in self.coefficients.items()}, default=0.0, return_dtype=pl.Float64)
        b = names.replace_strict({k: v[1] for k, v in self.coefficients.items()}, default=1.0, return_dtype=pl.Float64)
        a, b = a.to_numpy(), b.to_numpy()
        own = (a != 0.0) | (b != 1.0)
        # Rows of segments without their own calibration keep the global score exactly.
        return np.where(own, sigmoid(a + b * logit(scores)), np.asarray(scores, float))

    def table(self) -> list[dict[str, object]]:
        return [{"segment": k, "rows": self.rows[k], "pooling_weight": round(self.weights[k], 4),
                 "a": round(v[0], 4), "b": round(v[1], 4)} for k, v in sorted(self.coefficients.items())]


def fit_segment_calibration(scores: np.ndarray, grades: np.ndarray, segments: pl.Series, min_rows: int,
                            prior_rows: float) -> SegmentCalibration:
    frame = pl.DataFrame({"segment": segments.cast(pl.String), "row": np.arange(len(scores))})
    sizes = frame.group_by("segment").agg(pl.len().alias("n"), pl.col("row")).filter(
        pl.col("segment").is_not_null() & (pl.col("n") >= min_rows)).sort("segment")
    coefficients, rows, weights = {}, {}, {}
    for segment, n, members in sizes.iter_rows():     # one small fit per segment (a handful), not per row
        index = np.asarray(members)
        a, b = fit_logistic_recalibration(np.asarray(scores)[index], np.asarray(grades)[index])
        w = n / (n + prior_rows)
        coefficients[segment] = (w * a, w * b + (1 - w))
        rows[segment], weights[segment] = int(n), float(w)
    return SegmentCalibration(segments.name, coefficients, rows, weights)


class SegmentCalibrated:
    """A calibrated classifier followed by the per-segment recalibration: the model that gets registered.

    ``predict_proba`` takes what the wrapped estimator takes (pandas from MLflow's pyfunc, polars from
    ``predict_scores``) and needs the segment column among the features.
    """

    def __init__(self, base, calibration: SegmentCalibration) -> None:
        self.base = base
        self.calibration = calibration
        self.classes_ = getattr(base, "classes_", np.array([0, 1]))

    def predict_proba(self, X) -> np.ndarray:
        p = self.base.predict_proba(X)[:, 1]
        column = X[self.calibration.column]
        segments = column if isinstance(column, pl.Series) else pl.from_pandas(column)
        q = self.calibration.apply(p, segments)
        return np.column_stack([1 - q, q])

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def unwrap(estimator):
    """The globally calibrated estimator under a segment recalibration (the estimator itself otherwise)."""
    return estimator.base if isinstance(estimator, SegmentCalibrated) else estimator


@dataclass(frozen=True)
class SegmentedChoice:
    calibration: SegmentCalibration | None
    thresholds: SegmentThresholds
    default: ThresholdChoice                        # the global threshold choice (curve, reason) on all rows
    by_segment: dict[str, ThresholdChoice] = field(default_factory=dict)

    def table(self) -> list[dict[str, object]]:
        """One row per threshold: for the run's artifact and the retraining report."""
        rows = [{"segment": "(default)", "threshold": round(self.default.threshold, 6),
                 "positive_share": round(self.default.positive_share, 4), "reason": self.default.reason}]
        weights = self.calibration.weights if self.calibration else {}
        for segment, choice in sorted(self.by_segment.items()):
            rows.append({"segment": segment, "threshold": round(choice.threshold, 6),
                         "positive_share": round(choice.positive_share, 4),
                         "pooling_weight": round(weights.get(segment, 0.0), 4), "reason": choice.reason})
        return rows


def segmented_thresholds(scores: np.ndarray, grades: np.ndarray, frame: pl.DataFrame, spec: ModelSpec,
                         weeks: float) -> tuple[np.ndarray, SegmentedChoice]:
    """Recalibrate per segment (when the spec names a column) and choose the thresholds.

    Returns the recalibrated scores of ``frame`` (the calibration slice) and the choice.
    """
    column = spec.segments.column
    if not column:
        choice = choose_threshold(scores, grades, spec.objective, weeks)
        return np.asarray(scores, float), SegmentedChoice(None, SegmentThresholds(choice.threshold), choice)
    segments = frame.get_column(column)
    calibration = fit_segment_calibration(scores, grades, segments, spec.segments.min_rows, spec.segments.prior_rows)
    recalibrated = calibration.apply(scores, segments)
    grades = np.asarray(grades, float)
    default = choose_threshold(recalibrated, grades, spec.objective, weeks)
    names = segments.cast(pl.String).to_numpy()
    others = ~np.isin(names, list(calibration.coefficients))
    if spec.objective.kind == "precision_target" and others.any():
        # A precision target must also hold for the rows that decide by the default: small segments
        # (complaints in the first weeks) would otherwise ride on the acceptance of the large ones.
        rest = choose_threshold(recalibrated[others], grades[others], spec.objective, weeks)
        if rest.threshold > default.threshold:
            default = ThresholdChoice(rest.threshold, default.objective_value, default.positive_share, default.curve,
                                      f"{rest.reason} on the {int(others.sum())} rows of segments without their own "
                                      f"threshold (on all rows: {default.threshold:.3f})")
    by_segment = {}
    for segment in calibration.coefficients:
        own = names == segment
        by_segment[segment] = choose_threshold(recalibrated[own], np.asarray(grades)[own], spec.objective, weeks)
    thresholds = SegmentThresholds(default.threshold, column, {k: v.threshold for k, v in by_segment.items()})
    return recalibrated, SegmentedChoice(calibration, thresholds, default, by_segment)
