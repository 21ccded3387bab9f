"""Training: one scikit-learn Pipeline per model, calibrated on a later slice, tested on the latest weeks."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from features.build import model_inputs
from features.spec import ModelSpec
from features.training_set import NotEnoughData, Split, graded_rows
from models.decision_aware import (
    DECISION_INPUT,
    DecisionAwareModel,
    decision_scores,
    outcome_probability,
    with_decision,
)
from models.evaluate import classification_metrics
from models.logistic_prior import PriorLogisticRegression, log_odds_shift
from models.segments import SegmentCalibrated, SegmentedChoice, segmented_thresholds
from models.support import rows_the_model_decides
from models.thresholds import (
    SegmentThresholds,
    ThresholdChoice,
    choose_threshold,
    incremental_value_threshold,
)

# Graded weights are meant for the calibrator only: the frozen pipeline was fitted (with its own
# weights) before, so sklearn's warning that FrozenEstimator ignores them is expected. Filtered once
# here rather than with catch_warnings around the fit, which is not thread-safe: two models train
# side by side in threads, and one thread leaving catch_warnings drops the other's filter.
warnings.filterwarnings("ignore", message="Since FrozenEstimator does not appear to accept sample_weight",
                        category=UserWarning)


def signed_log(values: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|): counts and sizes spread over orders of magnitude; a linear model wants them even."""
    values = np.asarray(values, dtype=np.float64)   # the same array type whether pandas (fit) or polars (predict) came in
    return np.sign(values) * np.log1p(np.abs(values))


def build_pipeline(spec: ModelSpec, decision_aware: bool = False) -> Pipeline:
    """Categoricals one-hot encoded (rare and unseen values grouped), then the spec's estimator.

    Gradient boosting takes numbers and booleans as they are; the logistic regression takes numbers
    on a signed log scale, standardised. ``decision_aware`` adds the decision as one more input
    (models/decision_aware.py). A logistic regression has no interactions, so there the decision
    always shifts the log-odds by one learned amount; for gradient boosting the spec's
    ``decision_effect = "shared"`` does the same: the decision is the first encoded column, in an
    interaction group of its own.
    """
    logistic = spec.training.estimator == "logistic"
    shared = decision_aware and (logistic or spec.training.decision_effect == "shared")
    categorical = spec.features_of("categorical") + ([DECISION_INPUT] if decision_aware and not shared else [])
    numeric = spec.features_of("numeric")
    transformers = [
        ("categorical", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False),
         categorical),
        ("numeric", make_pipeline(FunctionTransformer(signed_log, feature_names_out="one-to-one"), StandardScaler())
         if logistic else "passthrough", numeric),
        ("boolean", "passthrough", spec.features_of("boolean")),
    ]
    if shared:
        # One 0/1 column (1 = positive decision) at index 0, in an interaction group of its own.
        decision = OneHotEncoder(categories=[[spec.negative_decision, spec.positive_decision]], drop="first",
                                 sparse_output=False)
        transformers.insert(0, ("decision", decision, [DECISION_INPUT]))
    encode = ColumnTransformer(transformers, verbose_feature_names_out=False)
    prior_sd = spec.training.decision_effect_prior_sd if decision_aware and logistic else None
    if prior_sd is not None:
        # The decision is column 0 (the shared encoding above): its coefficient starts from the spec's belief.
        model = PriorLogisticRegression(C=1.0, prior_mean=log_odds_shift(spec.objective.action_effect), prior_sd=prior_sd)
    elif logistic:
        model = LogisticRegression(C=1.0, max_iter=1000)
    else:
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.08, max_leaf_nodes=15, l2_regularization=1.0,
                                               early_stopping=False, random_state=spec.training.seed,
                                               interaction_cst=[[0]] if shared else None)
    return Pipeline([("encode", encode), ("classify", model)])


@dataclass(frozen=True)
class TrainedModel:
    estimator: Any                   # CalibratedClassifierCV, SegmentCalibrated around it, or DecisionAwareModel
    threshold: ThresholdChoice       # the default threshold (all segments without their own)
    test_metrics: dict[str, float]
    calibration_metrics: dict[str, float]
    test_scores: np.ndarray          # P(positive outcome | x, logged decision): what the labels are compared with
    test_labels: np.ndarray          # grades in [0, 1] (0/1 labels for a spec without graded outcomes)
    segments: SegmentedChoice | None = None
    # What the threshold applies to on the test rows, for the off-policy value of the policy; the
    # same as test_scores for a pooled model (models/decision_aware.py).
    test_decision_scores: np.ndarray | None = None

    @property
    def policy_scores(self) -> np.ndarray:
        return self.test_scores if self.test_decision_scores is None else self.test_decision_scores

    @property
    def thresholds(self) -> SegmentThresholds:
        return self.segments.thresholds if self.segments is not None else SegmentThresholds(self.threshold.threshold)


def sklearn_inputs(frame: pl.DataFrame, spec: ModelSpec):
    """The pandas frame scikit-learn gets: converted once, here, because polars input is ~14x slower to fit."""
    return model_inputs(frame, spec).to_pandas()


def grades_of(frame: pl.DataFrame) -> np.ndarray:
    """The graded outcome of each row (the binary label for frames built without grades)."""
    column = "grade" if "grade" in frame.columns else "label"
    return frame.get_column(column).cast(pl.Float64).to_numpy()


def _weeks(frame: pl.DataFrame) -> float:
    return max(frame.get_column("week").n_unique(), 1) if frame.height else 1.0


def check_slices(split: Split, names: tuple[str, ...] = ("fit", "calibration", "test"), decision: str | None = None) -> None:
    """Each named slice holds both outcomes; with ``decision``, the fit and calibration slices' rows of that decision."""
    for name in names:
        part = getattr(split, name)
        which = f"the {name} slice"
        if decision is not None and name != "test":
            part, which = part.filter(pl.col("decision") == decision), f"the {name} slice's '{decision}' rows"
        if part.is_empty() or part.get_column("label").n_unique() < 2:
            raise NotEnoughData(f"{which} need both outcomes; there are {part.height} rows")


def _with_grades(frame: pl.DataFrame) -> pl.DataFrame:
    return frame if "grade" in frame.columns else frame.with_columns(pl.col("label").cast(pl.Float64).alias("grade"))


def fit_pipeline(frame: pl.DataFrame, spec: ModelSpec) -> Pipeline:
    """The uncalibrated pipeline fitted on ``frame``; graded rows count as weighted positive and negative rows."""
    rows, weights = graded_rows(_with_grades(frame))
    pipeline = build_pipeline(spec)
    fit_params = {} if weights is None else {"classify__sample_weight": weights.to_numpy()}
    pipeline.fit(sklearn_inputs(rows, spec), rows.get_column("label").to_numpy(), **fit_params)
    return pipeline


def calibrate(pipeline: Pipeline, split: Split, spec: ModelSpec) -> TrainedModel:
    """Calibrate a fitted pipeline on the calibration slice, recalibrate per segment, choose the thresholds there,
    and score the test slice. Used by a full training and by a cheap recalibration of a champion's pipeline.
    Calibration rows the rule decides (a category the pipeline never saw) are left out: models/support.py."""
    split = dataclasses.replace(split, calibration=rows_the_model_decides(pipeline, split.calibration, spec))
    rows, weights = graded_rows(_with_grades(split.calibration))
    # Isotonic needs plenty of positives; with few of them a sigmoid is the safer fit.
    positives = float(rows.get_column("label").sum()) if weights is None else float((weights * rows.get_column("label")).sum())
    wanted = spec.training.calibration
    method = wanted if wanted == "sigmoid" or positives >= spec.training.isotonic_min_positives else "sigmoid"
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
    fit_params = {} if weights is None else {"sample_weight": weights.to_numpy()}
    calibrated.fit(sklearn_inputs(rows, spec), rows.get_column("label").to_numpy(), **fit_params)
    cal_grades = grades_of(split.calibration)
    global_scores = calibrated.predict_proba(sklearn_inputs(split.calibration, spec))[:, 1]
    cal_scores, choice = segmented_thresholds(global_scores, cal_grades, split.calibration, spec, _weeks(split.calibration))
    estimator = calibrated
    if choice.calibration is not None and choice.calibration.coefficients:
        estimator = SegmentCalibrated(calibrated, choice.calibration)
    test_scores = estimator.predict_proba(sklearn_inputs(split.test, spec))[:, 1]
    test_grades = grades_of(split.test)
    return TrainedModel(estimator, choice.default, classification_metrics(test_grades, test_scores),
                        {**classification_metrics(cal_grades, cal_scores), "method_isotonic": float(method == "isotonic")},
                        test_scores, test_grades, choice)


def fit_model(split: Split, spec: ModelSpec) -> TrainedModel:
    """Fit on the fit slice, calibrate and choose the thresholds on the calibration slice, score the test slice."""
    if spec.training.decision_aware:
        for decision in spec.decisions:
            check_slices(split, decision=decision)
        pipeline = build_pipeline(spec, decision_aware=True)
        pipeline.fit(decision_inputs(split.fit, spec), split.fit.get_column("label").to_numpy())
        return calibrate_decision_aware(pipeline, split, spec)
    check_slices(split)
    return calibrate(fit_pipeline(split.fit, spec), split, spec)


def decision_inputs(frame: pl.DataFrame, spec: ModelSpec):
    """sklearn_inputs plus the row's logged decision."""
    return with_decision(model_inputs(frame, spec), frame.get_column("decision")).to_pandas()


def calibrate_decision_aware(pipeline: Pipeline, split: Split, spec: ModelSpec) -> TrainedModel:
    """Calibrate a decision-aware pipeline (models/decision_aware.py) on rows with their own decisions.

    Metrics compare each labelled row with the probability of the decision it actually got; the
    threshold applies to the decision score. Used by a training and by a cheap recalibration. Calibration
    rows the rule decides (a category the pipeline never saw) are left out: models/support.py.
    """
    split = dataclasses.replace(split, calibration=rows_the_model_decides(pipeline, split.calibration, spec))
    labels = split.calibration.get_column("label")
    method = spec.training.calibration
    if method != "sigmoid" and float(labels.sum()) < spec.training.isotonic_min_positives:
        method = "sigmoid"
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method=method)
    calibrated.fit(decision_inputs(split.calibration, spec), labels.to_numpy())
    model = DecisionAwareModel(spec.positive_decision, spec.negative_decision, calibrated)
    cal_labels = labels.to_numpy()
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
                        test_scores, test_labels, test_decision_scores=decision_scores(model, split.test, spec))


def predict_scores(estimator, frame: pl.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The policy's decision scores. Predicting takes polars as it is: the same probabilities as from
    pandas (tests check), and the ColumnTransformer's per-call overhead is half, which is most of a
    one-row decision's cost."""
    return decision_scores(estimator, frame, spec)
