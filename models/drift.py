"""Drift between a reference window and a current window: features, model score and outcome rate.

Feature and score drift come from Evidently with the methods FIXED by the spec's `[drift]` section
(numeric: `method`, categorical and boolean: `categorical_method`), so the method never switches
with sample size (Evidently's default picks p-value tests below 1000 rows and distances above).
A category value that appears in the current window but never in the reference window (a new lead
source) always counts as drift for its column, whatever the distance says: a handful of rows of a
new value barely moves a Jensen-Shannon distance, but it is exactly the news the loop must notice.

The outcome-rate comparison is a plain difference of proportions computed with polars; the caller
passes an age-matched `outcome` column (rows of equal label age in both windows; nulls = unlabelled
rows, ignored). The outcome column is also added to the Evidently report so people see it there,
but Evidently's verdict on it is not used.

Evidently is imported inside `detect_drift` (about 3 s): CLI commands that do not need it do not pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from features.spec import ModelSpec

SCORE_COLUMN = "score"
OUTCOME_COLUMN = "outcome"


@dataclass(frozen=True)
class DriftResult:
    drifted_share: float                 # share of spec feature columns that drifted
    drifted_columns: tuple[str, ...]     # in spec order
    column_scores: dict[str, float]      # per feature: the drift score (distance) Evidently computed
    score_distance: float | None         # drift score of the model's `score` column (None if no score column)
    score_drifted: bool
    outcome_rate_reference: float | None # share of positive outcomes, None if no outcome column / no labelled rows
    outcome_rate_current: float | None
    outcome_rate_drifted: bool           # |current - reference| > spec.drift.outcome_rate_tolerance
    drift_detected: bool                 # drifted_share >= drift_share or score_drifted or outcome_rate_drifted
    reference_rows: int
    current_rows: int

    def summary(self) -> dict[str, float | int | str | bool]:
        """Flat dict for MLflow metrics / Prefect table artifacts.

        Values that are None (no score column, no outcome) are left out, so every value can be logged.
        `drifted_columns` is the only string (comma-separated; filter strings out for `log_metrics`).
        """
        out: dict[str, float | int | str | bool] = {
            "drift_detected": self.drift_detected,
            "drifted_share": self.drifted_share,
            "drifted_count": len(self.drifted_columns),
            "drifted_columns": ",".join(self.drifted_columns),
            "score_drifted": self.score_drifted,
            "outcome_rate_drifted": self.outcome_rate_drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
        }
        if self.score_distance is not None:
            out["score_distance"] = self.score_distance
        if self.outcome_rate_reference is not None:
            out["outcome_rate_reference"] = self.outcome_rate_reference
        if self.outcome_rate_current is not None:
            out["outcome_rate_current"] = self.outcome_rate_current
        if self.outcome_rate_reference is not None and self.outcome_rate_current is not None:
            out["outcome_rate_change"] = self.outcome_rate_current - self.outcome_rate_reference
        for name, value in self.column_scores.items():
            out[f"drift_score_{name}"] = value
        return out


def detect_drift(reference: pl.DataFrame, current: pl.DataFrame, spec: ModelSpec,
                 html_path: Path | None = None) -> DriftResult:
    """Compare `current` with `reference` (see module docstring). Writes the Evidently HTML report to
    `html_path` (parent folders created) when given, and the snapshot as JSON beside it (same name,
    `.json`), which the Evidently workspace loads (models/dashboard.py)."""
    result, snapshot = _detect(reference, current, spec)
    if html_path is not None:
        html_path = Path(html_path)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
        html_path.with_suffix(".json").write_text(snapshot.dumps(), encoding="utf-8")
    return result


# --------------------------------------------------------------------------------------------------


def _detect(reference: pl.DataFrame, current: pl.DataFrame, spec: ModelSpec) -> tuple[DriftResult, Any]:
    """The work of `detect_drift`; also returns the Evidently snapshot (tests read its config)."""
    windows = {"reference": reference, "current": current}
    for window, frame in windows.items():
        if frame.height == 0:
            raise ValueError(f"drift: the {window} window is empty (0 rows)")
    for window, frame in windows.items():
        missing = [name for name in spec.feature_names if name not in frame.columns]
        if missing:
            raise ValueError(f"drift: feature column(s) {missing} missing from the {window} window "
                             f"(spec '{spec.name}')")
    has_score = [SCORE_COLUMN in frame.columns for frame in windows.values()]
    if any(has_score) and not all(has_score):
        absent = "current" if has_score[0] else "reference"
        raise ValueError(f"drift: column '{SCORE_COLUMN}' is in one window but missing from the {absent} window")
    has_score = all(has_score)

    prepared = {w: _prepare(f, spec, w, has_score) for w, f in windows.items()}

    # Outcome rates with polars (nulls = unlabelled rows, ignored).
    rates = {w: _outcome_rate(f) for w, f in prepared.items()}
    rate_ref, rate_cur = rates["reference"], rates["current"]
    outcome_rate_drifted = (rate_ref is not None and rate_cur is not None
                            and abs(rate_cur - rate_ref) > spec.drift.outcome_rate_tolerance)
    # Evidently can only show the outcome when both windows have labelled rows.
    outcome_in_report = rate_ref is not None and rate_cur is not None

    categorical = spec.features_of("categorical") + spec.features_of("boolean")
    new_values = _new_category_values(prepared["reference"], prepared["current"], categorical)

    snapshot = _run_evidently(prepared["reference"], prepared["current"], spec, has_score, outcome_in_report)
    verdicts = _read_value_drifts(snapshot.dict())

    column_scores: dict[str, float] = {}
    drifted: list[str] = []
    for name in spec.feature_names:
        score, evidently_drift = verdicts[name]
        column_scores[name] = score
        if evidently_drift or new_values.get(name):
            drifted.append(name)
    drifted_share = len(drifted) / len(spec.feature_names)

    score_distance: float | None = None
    score_drifted = False
    if has_score:
        score_distance, score_drifted = verdicts[SCORE_COLUMN]

    result = DriftResult(
        drifted_share=drifted_share,
        drifted_columns=tuple(drifted),
        column_scores=column_scores,
        score_distance=score_distance,
        score_drifted=score_drifted,
        outcome_rate_reference=rate_ref,
        outcome_rate_current=rate_cur,
        outcome_rate_drifted=outcome_rate_drifted,
        drift_detected=drifted_share >= spec.drift.drift_share or score_drifted or outcome_rate_drifted,
        reference_rows=reference.height,
        current_rows=current.height,
    )
    return result, snapshot


def _prepare(frame: pl.DataFrame, spec: ModelSpec, window: str, has_score: bool) -> pl.DataFrame:
    """Select the columns Evidently sees, with types it understands: numeric -> Float64,
    categorical and boolean -> String ("true"/"false"), score -> Float64, outcome -> Boolean."""
    exprs: list[pl.Expr] = []
    for feature in spec.features:
        target = pl.Float64 if feature.type == "numeric" else pl.String
        exprs.append(pl.col(feature.name).cast(target).alias(feature.name))
    if has_score:
        exprs.append(pl.col(SCORE_COLUMN).cast(pl.Float64))
    if OUTCOME_COLUMN in frame.columns:
        exprs.append(pl.col(OUTCOME_COLUMN).cast(pl.Boolean))
    try:
        out = frame.select(exprs)
    except pl.exceptions.PolarsError:
        for expr in exprs:  # find the column to name it
            try:
                frame.select(expr)
            except pl.exceptions.PolarsError as exc:
                name = expr.meta.output_name()
                raise ValueError(f"drift: column '{name}' in the {window} window has type "
                                 f"{frame.schema[name]}, which cannot be used ({exc})") from None
        raise
    # NaN/inf count as missing (Evidently drops them); a column with nothing left cannot be compared.
    numeric = [f.name for f in spec.features if f.type == "numeric"] + ([SCORE_COLUMN] if has_score else [])
    out = out.with_columns(pl.when(pl.col(c).is_finite()).then(pl.col(c)).otherwise(None).alias(c)
                           for c in numeric)
    for name in spec.feature_names + ([SCORE_COLUMN] if has_score else []):
        if out[name].null_count() == out.height:
            raise ValueError(f"drift: column '{name}' has no values in the {window} window (all null)")
    return out


def _outcome_rate(frame: pl.DataFrame) -> float | None:
    if OUTCOME_COLUMN not in frame.columns:
        return None
    labelled = frame[OUTCOME_COLUMN].drop_nulls()
    if labelled.len() == 0:
        return None
    return float(labelled.mean())


def _new_category_values(reference: pl.DataFrame, current: pl.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Per categorical/boolean column: values present in current but never in reference."""
    out = {}
    for name in columns:
        seen = set(reference[name].drop_nulls().unique().to_list())
        new = sorted(set(current[name].drop_nulls().unique().to_list()) - seen)
        if new:
            out[name] = new
    return out


def _run_evidently(reference: pl.DataFrame, current: pl.DataFrame, spec: ModelSpec,
                   has_score: bool, include_outcome: bool):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numeric = spec.features_of("numeric")
    categorical = spec.features_of("categorical") + spec.features_of("boolean")
    columns = list(spec.feature_names)
    extra_metrics = []
    if has_score:
        numeric = numeric + [SCORE_COLUMN]
        columns.append(SCORE_COLUMN)
        extra_metrics.append(ValueDrift(column=SCORE_COLUMN, method=spec.drift.method,
                                        threshold=spec.drift.score_threshold))
    if include_outcome:
        categorical = categorical + [OUTCOME_COLUMN]
        columns.append(OUTCOME_COLUMN)
        extra_metrics.append(ValueDrift(column=OUTCOME_COLUMN, method=spec.drift.categorical_method,
                                        threshold=spec.drift.threshold))

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def to_dataset(frame: pl.DataFrame):
        frame = frame.select(columns)
        if include_outcome:  # Evidently wants categories as strings
            frame = frame.with_columns(pl.col(OUTCOME_COLUMN).cast(pl.String))
        return Dataset.from_pandas(frame.to_pandas(), data_definition=definition)  # the one conversion

    report = Report(
        [
            DataDriftPreset(
                columns=list(spec.feature_names),
                num_method=spec.drift.method,
                cat_method=spec.drift.categorical_method,
                threshold=spec.drift.threshold,
                drift_share=spec.drift.drift_share,
            ),
            *extra_metrics,
        ],
        include_tests=True,
    )
    return report.run(to_dataset(current), to_dataset(reference))  # current first


def _read_value_drifts(snapshot: dict) -> dict[str, tuple[float, bool]]:
    """column -> (drift score, drift detected) from the ValueDrift metrics and their tests."""
    status = {t["metric_config"]["metric_id"]: t.get("status") for t in snapshot.get("tests", [])}
    out = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            if metric["id"] not in status:
                raise RuntimeError(f"drift: Evidently returned no drift test for column '{config['column']}'")
            out[config["column"]] = (float(metric["value"]), status[metric["id"]] == "FAIL")
    return out
