"""Cheap recalibration between retrainings: a new calibrator and threshold on top of the champion's pipeline.

When the mature outcomes of the most recent weeks show the champion's scores systematically off (its
expected calibration error there above the gates' ``max_calibration_error``) while it still ranks as
well as it did (ROC AUC within the spec's ``[recalibration] auc_tolerance`` of its training AUC), a
retraining is not needed: only the map from the pipeline's raw score to a probability moved (a lead
score that is systematically too high or too low). The champion's fitted pipeline is kept as it is;
a new calibrator (sigmoid below ``isotonic_min_positives`` positives, isotonic above), the
per-segment recalibration and the thresholds are fitted on the calibration slice of the usual
time-ordered split, and the result is scored on the test slice, so it goes through the same gates
as any challenger. Its registered version names the version it was recalibrated from
(``recalibrated_from``) and the version whose pipeline it reuses (``base_version``).

If the ranking degraded too, recalibration cannot help; the check says so and leaves it to a retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from features.spec import ModelSpec
from features.training_set import Split, time_split
from models.evaluate import classification_metrics
from models.registry import LoadedModel
from models.segments import unwrap
from models.train import (
    TrainedModel,
    calibrate,
    check_slices,
    grades_of,
    predict_scores,
)

RECALIBRATED_FROM = "recalibrated_from"
BASE_VERSION = "base_version"
BASE_AS_OF = "base_as_of"


@dataclass(frozen=True)
class CalibrationCheck:
    """The champion on the most recent mature outcomes (the test slice of the split)."""
    needed: bool
    rows: int
    calibration_error: float
    roc_auc: float
    training_auc: float
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"needed": self.needed, "rows": self.rows, "calibration_error": self.calibration_error,
                "roc_auc": self.roc_auc, "training_auc": self.training_auc, "reason": self.reason}


def check_calibration(spec: ModelSpec, labels: np.ndarray, scores: np.ndarray, training_auc: float) -> CalibrationCheck:
    """Recalibrate when calibration error is above the bound and the ranking is still within tolerance."""
    metrics = classification_metrics(labels, scores)
    ece, auc, rows = metrics["calibration_error"], metrics["roc_auc"], len(labels)
    bound, tolerance = spec.gates.max_calibration_error, spec.recalibration.auc_tolerance
    if rows < spec.recalibration.min_rows:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"{rows} recent mature rows, the check needs {spec.recalibration.min_rows}")
    if not ece > bound:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"calibration error {ece:.3f} within the bound {bound}: nothing to recalibrate")
    if not auc >= training_auc - tolerance:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"calibration error {ece:.3f} above the bound {bound}, but ROC AUC {auc:.3f} fell more than "
                                f"{tolerance} below the training AUC {training_auc:.3f}: the ranking needs a retraining")
    return CalibrationCheck(True, rows, ece, auc, training_auc,
                            f"calibration error {ece:.3f} above the bound {bound} while ROC AUC {auc:.3f} is within "
                            f"{tolerance} of the training AUC {training_auc:.3f}: recalibrate")


def base_pipeline(estimator):
    """The fitted (uncalibrated) pipeline inside a registered model."""
    calibrated = unwrap(estimator)
    if not isinstance(calibrated, CalibratedClassifierCV):
        raise TypeError(f"cannot recalibrate a {type(calibrated).__name__}: expected a CalibratedClassifierCV")
    inner = calibrated.calibrated_classifiers_[0].estimator
    return inner.estimator if isinstance(inner, FrozenEstimator) else inner


@dataclass(frozen=True)
class Recalibration:
    check: CalibrationCheck
    split: Split | None = None
    trained: TrainedModel | None = None


def recalibrate_champion(spec: ModelSpec, labelled: pl.DataFrame, champion: LoadedModel, training_auc: float) -> Recalibration:
    """Check the champion on the most recent labelled weeks; if it is miscalibrated but ranks well,
    fit a new calibrator and thresholds on the rows just before them, on top of its pipeline."""
    split = time_split(labelled, spec)
    check_slices(split, ("calibration", "test"))
    scores = predict_scores(champion.estimator, split.test, spec)
    check = check_calibration(spec, grades_of(split.test), scores, training_auc)
    if not check.needed:
        return Recalibration(check)
    return Recalibration(check, split, calibrate(base_pipeline(champion.estimator), split, spec))


def lineage_tags(champion_tags: dict[str, str], champion_version: str) -> dict[str, str]:
    """A recalibrated version's lineage: where it came from and whose pipeline (and training window) it keeps."""
    return {RECALIBRATED_FROM: champion_version,
            BASE_VERSION: champion_tags.get(BASE_VERSION, champion_version),
            BASE_AS_OF: champion_tags.get(BASE_AS_OF, champion_tags.get("as_of", "")),
            "kind": "recalibration"}

