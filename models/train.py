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
from models.decision_aware import (
    DECISION_INPUT,
    DecisionAwareModel,
    decision_scores,
    outcome_probability,
    with_decision,
)
from models.evaluate import classification_metrics
from models.thresholds import (
    ThresholdChoice,
    choose_threshold,
    incremental_value_threshold,
)


def build_pipeline(spec: ModelSpec, decision_aware: bool = False) -> Pipeline:
    """Categoricals one-hot encoded (rare and unseen values grouped), numbers and booleans as they are.

    ``decision_aware`` adds the decision as one more categorical input (models/decision_aware.py).
    """
    categorical = spec.features_of("categorical") + ([DECISION_INPUT] if decision_aware else [])
    encode = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False),
          categorical),
         ("numeric", "passthrough", spec.features_of("numeric") + spec.features_of("boolean"))],
        verbose_feature_names_out=False,
    )
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.08, max_leaf_nodes=15, l2_regularization=1.0,
                                           early_stopping=False, random_state=spec.training.seed)
    return Pipeline([("encode", encode), ("classify", model)])


@dataclass(frozen=True)
class TrainedModel:
    estimator: CalibratedClassifierCV | DecisionAwareModel
    threshold: ThresholdChoice
    test_metrics: dict[str, float]
    calibration_metrics: dict[str, float]
    test_scores: np.ndarray         # P(positive outcome | x, logged decision): what the labels are compared with
    test_labels: np.ndarray
    # What the threshold applies to on the test rows, for the off-policy value of the policy; the
    # same as test_scores for a pooled model (models/decision_aware.py).
    test_decision_scores: np.ndarray | None = None

    @property
    def policy_scores(self) -> np.ndarray:
        return self.test_scores if self.test_decision_scores is None else self.test_decision_scores


def sklearn_inputs(frame: pl.DataFrame, spec: ModelSpec):
    """The pandas frame scikit-learn gets: converted once, here, because polars input is ~14x slower to fit."""
    return model_inputs(frame, spec).to_pandas()


def _weeks(frame: pl.DataFrame) -> float:
    return max(frame.get_column("week").n_unique(), 1) if frame.height else 1.0


def _calibrated(pipeline: Pipeline, calibration: pl.DataFrame, spec: ModelSpec,
                inputs=sklearn_inputs) -> tuple[CalibratedClassifierCV, str]:
    # Isotonic needs plenty of positives; with few of them a sigmoid is the safer fit.
    positives = int(calibration.get_column("label").sum())
    method = spec.training.calibration if positives >= 1000 or spec.training.calibration == "sigmoid" else "sigmoid"
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
    calibrated.fit(inputs(calibration, spec), calibration.get_column("label").to_numpy())
    return calibrated, method


def _require_both_outcomes(split: Split, decision: str | None = None) -> None:
    for name, part in (("fit", split.fit), ("calibration", split.calibration), ("test", split.test)):
        if decision is not None and name != "test":
            part = part.filter(pl.col("decision") == decision)
        if part.is_empty() or part.get_column("label").n_unique() < 2:
            which = f"the {name} slice's '{decision}' rows" if decision and name != "test" else f"the {name} slice"
            raise NotEnoughData(f"{which} need both outcomes; there are {part.height} rows")


def fit_model(split: Split, spec: ModelSpec) -> TrainedModel:
    """Fit on the fit slice, calibrate and choose the threshold on the calibration slice, score the test slice."""
    if spec.training.decision_aware:
        return fit_decision_aware(split, spec)
    _require_both_outcomes(split)
    pipeline = build_pipeline(spec)
    pipeline.fit(sklearn_inputs(split.fit, spec), split.fit.get_column("label").to_numpy())
    calibrated, method = _calibrated(pipeline, split.calibration, spec)
    cal_labels = split.calibration.get_column("label").to_numpy()
    cal_scores = calibrated.predict_proba(sklearn_inputs(split.calibration, spec))[:, 1]
    threshold = choose_threshold(cal_scores, cal_labels, spec.objective, _weeks(split.calibration))
    test_scores = calibrated.predict_proba(sklearn_inputs(split.test, spec))[:, 1]
    test_labels = split.test.get_column("label").to_numpy()
    return TrainedModel(calibrated, threshold, classification_metrics(test_labels, test_scores),
                        {**classification_metrics(cal_labels, cal_scores), "method_isotonic": float(method == "isotonic")},
                        test_scores, test_labels)


def fit_decision_aware(split: Split, spec: ModelSpec) -> TrainedModel:
    """The decision as an input (models/decision_aware.py): fit, calibrate and score with each row's own decision.

    Metrics compare each labelled row with the probability of the decision it actually got; the
    threshold applies to the decision score.
    """
    for decision in spec.decisions:
        _require_both_outcomes(split, decision)
    pipeline = build_pipeline(spec, decision_aware=True)
    pipeline.fit(decision_inputs(split.fit, spec), split.fit.get_column("label").to_numpy())
    calibrated, method = _calibrated(pipeline, split.calibration, spec, inputs=decision_inputs)
    model = DecisionAwareModel(spec.positive_decision, spec.negative_decision, calibrated)
    cal_labels = split.calibration.get_column("label").to_numpy()
    cal_probabilities = outcome_probability(model, split.calibration, spec)
    weeks = _weeks(split.calibration)
    cal_scores = decision_scores(model, split.calibration, spec)
    if spec.objective.kind == "expected_value":
        threshold = incremental_value_threshold(cal_scores, spec.objective, weeks)
    else:
        threshold = choose_threshold(cal_scores, cal_labels, spec.objective, weeks)
    test_scores = outcome_probability(model, split.test, spec)
    test_labels = split.test.get_column("label").to_numpy()
    calibration_metrics = {**classification_metrics(cal_labels, cal_probabilities), "method_isotonic": float(method == "isotonic")}
    return TrainedModel(model, threshold, classification_metrics(test_labels, test_scores), calibration_metrics,
                        test_scores, test_labels, decision_scores(model, split.test, spec))


def decision_inputs(frame: pl.DataFrame, spec: ModelSpec):
    """sklearn_inputs plus the row's logged decision."""
    return with_decision(model_inputs(frame, spec), frame.get_column("decision")).to_pandas()


def predict_scores(estimator, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The policy's decision scores. Predicting takes polars as it is: the same probabilities as from
    pandas (tests check), and the ColumnTransformer's per-call overhead is half, which is most of a
    one-row decision's cost."""
    return decision_scores(estimator, frame, spec)
