"""Where the champion has seen data: rows with a category value its encoder never saw or saw too rarely.

A champion asked about a category it was never trained on (a new lead source, a new reply template),
or saw too rarely to learn it (its encoder grouped the value as infrequent), extrapolates: the model
decides as if the row came from the reference category or the group of rare ones, on whatever its
other features say. The spec's cold-start rule is the documented prior for rows no model has evidence
about, so with ``new_categories = "rule"`` (the default) the policy decides those rows by the rule,
exploring them as the rule does, until a retraining has learned the category (models/policy.py). The
action still carries the champion's version; its ``score`` (the rule's 0/1) and ``threshold`` (0.5)
show the rule decided.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from features.spec import ModelSpec
from models.decision_aware import is_decision_aware
from models.segments import unwrap

SMALL_FRAME = 64        # rows up to which rows_outside checks in Python rather than with a polars query
RULE_THRESHOLD = 0.5     # the threshold logged with a rule decision: any threshold in (0, 1) splits its 0/1 score alike


def fitted_pipeline(estimator: Any) -> Pipeline | None:
    """The fitted pipeline inside a registered model (decision-aware, segment- or globally calibrated), if any."""
    inner = unwrap(estimator.estimator if is_decision_aware(estimator) else estimator)
    if isinstance(inner, CalibratedClassifierCV):
        inner = inner.calibrated_classifiers_[0].estimator
    if isinstance(inner, FrozenEstimator):
        inner = inner.estimator
    return inner if isinstance(inner, Pipeline) else None


def seen_categories(estimator: Any, spec: ModelSpec) -> dict[str, list[str]]:
    """The values of each of the spec's categorical features the model has learned: those its encoder was
    fitted on, less the ones it grouped as infrequent.

    An infrequent value (fewer fit rows than the encoder's ``min_frequency``) shares one coefficient with
    every other rare value, learned from a handful of rows, so the model knows as little about it as
    about a value it never saw. The benchmark showed the cost: a new lead source with fewer than 20 rows
    in the fit slice counted as seen, and the champion extrapolated from its inflated engagement to
    meetings for three quarters of its leads.
    """
    pipeline = fitted_pipeline(estimator)
    if pipeline is None or "encode" not in pipeline.named_steps:
        return {}
    encoder = pipeline.named_steps["encode"].named_transformers_.get("categorical")
    if encoder is None or not hasattr(encoder, "categories_"):
        return {}
    wanted = set(spec.features_of("categorical"))
    # Per column the values grouped as infrequent, or None; the attribute is missing without min_frequency.
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(encoder.categories_)
    return {str(column): [str(v) for v in values if rare is None or v not in rare]
            for column, values, rare in zip(encoder.feature_names_in_, encoder.categories_, infrequent, strict=True)
            if column in wanted}


def unseen_rows(estimator: Any, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    """True for each row with a categorical value the model never saw (a missing value counts as seen)."""
    return rows_outside(seen_categories(estimator, spec), frame)


def rows_outside(seen: dict[str, list[str]], frame: pl.DataFrame) -> np.ndarray:
    """True for each row with a value outside ``seen`` (seen_categories) in one of its columns."""
    columns = [c for c in seen if c in frame.columns]
    if 0 < frame.height <= SMALL_FRAME:
        # A single decision in the scoring service: set lookups take microseconds, a polars query 0.2 ms.
        sets = {c: set(seen[c]) for c in columns}
        values = {c: frame.get_column(c).cast(pl.String).to_list() for c in columns}
        return np.array([any(values[c][i] is not None and values[c][i] not in sets[c] for c in columns)
                         for i in range(frame.height)], dtype=bool)
    conditions = [pl.col(column).cast(pl.String).is_in(values).not_().fill_null(False)
                  for column, values in seen.items() if column in frame.columns]
    if not conditions or frame.is_empty():
        return np.zeros(frame.height, dtype=bool)
    return frame.select(pl.any_horizontal(conditions).alias("unseen")).to_series().to_numpy()


def rows_the_model_decides(pipeline: Any, frame: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    """The rows of ``frame`` a policy with this fitted pipeline hands to the model rather than to the rule.

    With ``new_categories = "rule"`` that leaves out rows with a category the pipeline never learned. A
    calibrator or threshold fitted on them would learn the pipeline's extrapolation there, which the policy
    never uses: the benchmark's new lead source (bot-inflated engagement, almost no conversions) reached the
    calibration slice a week before the fit slice, and the calibrator squashed every high score, so the
    challenger proposed meetings to a third of the referrals, where the oracle proposes to four fifths.
    """
    if spec.new_categories != "rule" or frame.is_empty():
        return frame
    return frame.filter(pl.Series(~unseen_rows(pipeline, frame, spec)))
