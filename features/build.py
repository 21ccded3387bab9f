"""Model input frames: the spec's feature columns, typed for the scikit-learn pipeline."""

from __future__ import annotations

import polars as pl

from features.spec import ModelSpec

MISSING_CATEGORY = "__missing__"


class FeatureError(ValueError):
    """Model input lacks a column or has one of the wrong type; the message names it."""


def model_inputs(frame: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    """Select and coerce the spec's features: booleans as 0/1 floats, categoricals as text, nulls explicit."""
    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise FeatureError(f"model '{spec.name}' needs feature column(s) {missing}; the frame has {frame.columns}")
    exprs = []
    for feature in spec.features:
        col, dtype = pl.col(feature.name), frame.schema[feature.name]
        if feature.type == "categorical":
            exprs.append(col.cast(pl.String).fill_null(MISSING_CATEGORY))
        elif feature.type == "boolean":
            if dtype not in (pl.Boolean, pl.Null) and not dtype.is_numeric():
                raise FeatureError(f"feature '{feature.name}' should be boolean, is {dtype}")
            exprs.append(col.cast(pl.Float64))
        else:
            if not (dtype.is_numeric() or dtype == pl.Null):
                raise FeatureError(f"feature '{feature.name}' should be numeric, is {dtype}")
            exprs.append(col.cast(pl.Float64))
    return frame.select(exprs)
