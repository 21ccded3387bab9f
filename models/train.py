"""Training: one scikit-learn Pipeline per model, calibrated on a later slice, tested on the latest weeks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from features.build import model_inputs
from features.spec import ModelSpec
from features.training_set import NotEnoughData, Split
from models.evaluate import classification_metrics
from models.thresholds import ThresholdChoice, choose_threshold


def build_pipeline(spec: ModelSpec) -> Pipeline:
    """Categoricals one-hot encoded (rare and unseen values grouped), numbers and booleans as they are."""
    encode = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False),
          spec.features_of("categorical")),
         ("numeric", "passthrough", spec.features_of("numeric") + spec.features_of("boolean"))],
        verbose_feature_names_out=False,
    )
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.08, max_leaf_nodes=15, l2_regularization=1.0,
                                           early_stopping=False, random_state=spec.training.seed)
    return Pipeline([("encode", encode), ("classify", model)])


@dataclass(frozen=True)
class TrainedModel:
    estimator: CalibratedClassifierCV
    threshold: ThresholdChoice
    test_metrics: dict[str, float]
    calibration_metrics: dict[str, float]
    test_scores: np.ndarray
    test_labels: np.ndarray


def sklearn_inputs(frame: pl.DataFrame, spec: ModelSpec):
    """The pandas frame scikit-learn gets: converted once, here, because polars input is ~14x slower to fit."""
    return model_inputs(frame, spec).to_pandas()


def _weeks(frame: pl.DataFrame) -> float:
    return max(frame.get_column("week").n_unique(), 1) if frame.height else 1.0


def fit_model(split: Split, spec: ModelSpec) -> TrainedModel:
    """Fit on the fit slice, calibrate and choose the threshold on the calibration slice, score the test slice."""
    for name, part in (("fit", split.fit), ("calibration", split.calibration), ("test", split.test)):
        if part.is_empty() or part.get_column("label").n_unique() < 2:
            raise NotEnoughData(f"the {name} slice needs both outcomes; it has {part.height} rows")
    pipeline = build_pipeline(spec)
    pipeline.fit(sklearn_inputs(split.fit, spec), split.fit.get_column("label").to_numpy())
    # Isotonic needs plenty of positives; with few of them a sigmoid is the safer fit.
    positives = int(split.calibration.get_column("label").sum())
    method = spec.training.calibration if positives >= 1000 or spec.training.calibration == "sigmoid" else "sigmoid"
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
    cal_labels = split.calibration.get_column("label").to_numpy()
    calibrated.fit(sklearn_inputs(split.calibration, spec), cal_labels)
    cal_scores = calibrated.predict_proba(sklearn_inputs(split.calibration, spec))[:, 1]
    threshold = choose_threshold(cal_scores, cal_labels, spec.objective, _weeks(split.calibration))
    test_scores = calibrated.predict_proba(sklearn_inputs(split.test, spec))[:, 1]
    test_labels = split.test.get_column("label").to_numpy()
    return TrainedModel(calibrated, threshold, classification_metrics(test_labels, test_scores),
                        {**classification_metrics(cal_labels, cal_scores), "method_isotonic": float(method == "isotonic")},
                        test_scores, test_labels)


def predict_scores(estimator, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    # Predicting takes polars as it is: the same probabilities as from pandas (tests check), and the
    # ColumnTransformer's per-call overhead is half, which is most of a one-row decision's cost.
    return estimator.predict_proba(model_inputs(frame, spec))[:, 1]
