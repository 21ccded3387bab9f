"""Cheap recalibration between retrainings: a new calibrator and threshold on top of the champion's pipeline.

When the mature outcomes of the most recent weeks show the champion's scores systematically off (its
expected calibration error there above the gates' ``max_calibration_error``) while it still ranks as
well as it should (ROC AUC within the spec's ``[recalibration] auc_tolerance`` of what its own
probabilities, shifted to the new outcome rate, imply), a retraining is not needed: only the map
from the pipeline's raw score to a probability moved (a lead score that is systematically too high
or too low). The champion's fitted pipeline is kept as it is;
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
from scipy.optimize import brentq
from sklearn.calibration import CalibratedClassifierCV

from features.spec import ModelSpec
from features.training_set import Split, time_split
from models.decision_aware import is_decision_aware, outcome_probability
from models.evaluate import classification_metrics
from models.registry import LoadedModel
from models.segments import unwrap
from models.support import fitted_pipeline
from models.train import (
    TrainedModel,
    calibrate,
    calibrate_decision_aware,
    check_slices,
    grades_of,
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


def expected_auc_if_only_shifted(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ROC AUC the labels should show if the champion were right up to one log-odds shift.

    A lower base rate lowers the AUC even of a perfect ranking (the rows it ranks high convert less
    surely), so the training AUC is the wrong yardstick after such a shift. Here the champion's
    probabilities are shifted until they average to the observed rate, and the AUC expected when
    labels are drawn from them is computed exactly (ties count half).
    """
    p = np.clip(np.asarray(probabilities, float), 1e-6, 1 - 1e-6)
    rate = float(np.clip(np.mean(labels), 1e-6, 1 - 1e-6))
    log_odds = np.log(p / (1 - p))
    shift = brentq(lambda c: float(np.mean(1 / (1 + np.exp(-(log_odds + c))))) - rate, -30.0, 30.0)
    q = 1 / (1 + np.exp(-(log_odds + shift)))
    _, group = np.unique(p, return_inverse=True)
    positive = np.bincount(group, weights=q)            # expected positives per distinct score, ascending
    negative = np.bincount(group, weights=1 - q)
    same = np.bincount(group, weights=q * (1 - q))      # a row is never paired with itself
    below = np.cumsum(negative) - negative
    pairs = q.sum() * (1 - q).sum() - same.sum()
    return float((positive * below + 0.5 * (positive * negative - same)).sum() / pairs) if pairs > 0 else float("nan")


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of a ROC AUC from this many positive and negative rows."""
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (positives * negatives)
    return float(np.sqrt(max(variance, 0.0)))


def check_calibration(spec: ModelSpec, labels: np.ndarray, scores: np.ndarray, training_auc: float) -> CalibrationCheck:
    """Recalibrate when calibration error is above the bound and the ranking is still within tolerance.

    "Within tolerance" is judged against the AUC the champion itself implies for these rows once its
    probabilities are shifted to their outcome rate (expected_auc_if_only_shifted), not against its
    training AUC, which a mere change of the base rate moves too; ``training_auc`` is reported.
    """
    metrics = classification_metrics(labels, scores)
    ece, auc, rows = metrics["calibration_error"], metrics["roc_auc"], len(labels)
    bound, tolerance = spec.gates.max_calibration_error, spec.recalibration.auc_tolerance
    if rows < spec.recalibration.min_rows:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"{rows} recent mature rows, the check needs {spec.recalibration.min_rows}")
    if not ece > bound:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"calibration error {ece:.3f} within the bound {bound}: nothing to recalibrate")
    expected = expected_auc_if_only_shifted(labels, scores)
    # A week holds a few dozen conversions, so its AUC alone moves by ±0.05: only a fall beyond the tolerance
    # plus the one-sided 95 % sampling margin counts as a lost ranking.
    margin = 1.645 * auc_standard_error(auc, int(np.sum(labels)), rows - int(np.sum(labels)))
    if not auc >= expected - tolerance - margin:
        return CalibrationCheck(False, rows, ece, auc, training_auc,
                                f"calibration error {ece:.3f} above the bound {bound}, but ROC AUC {auc:.3f} is more than "
                                f"{tolerance} + {margin:.3f} (sampling) below the {expected:.3f} a shifted champion would "
                                f"rank at (training AUC {training_auc:.3f}): the ranking needs a retraining")
    return CalibrationCheck(True, rows, ece, auc, training_auc,
                            f"calibration error {ece:.3f} above the bound {bound} while ROC AUC {auc:.3f} is within "
                            f"{tolerance} of the {expected:.3f} a shifted champion would rank at (training AUC "
                            f"{training_auc:.3f}): recalibrate")


def base_pipeline(estimator):
    """The fitted (uncalibrated) pipeline inside a registered model."""
    calibrated = unwrap(estimator)
    if not isinstance(calibrated, CalibratedClassifierCV):
        raise TypeError(f"cannot recalibrate a {type(calibrated).__name__}: expected a CalibratedClassifierCV")
    return fitted_pipeline(calibrated)


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
    # Calibration compares labels with the probability of the decision each row got (for a pooled
    # model that is its score; a decision-aware model's score is an incremental probability).
    probabilities = outcome_probability(champion.estimator, split.test, spec)
    check = check_calibration(spec, grades_of(split.test), probabilities, training_auc)
    if not check.needed:
        return Recalibration(check)
    if is_decision_aware(champion.estimator):
        return Recalibration(check, split, calibrate_decision_aware(base_pipeline(champion.estimator.estimator), split, spec))
    return Recalibration(check, split, calibrate(base_pipeline(champion.estimator), split, spec))


def lineage_tags(champion_tags: dict[str, str], champion_version: str) -> dict[str, str]:
    """A recalibrated version's lineage: where it came from and whose pipeline (and training window) it keeps."""
    return {RECALIBRATED_FROM: champion_version,
            BASE_VERSION: champion_tags.get(BASE_VERSION, champion_version),
            BASE_AS_OF: champion_tags.get(BASE_AS_OF, champion_tags.get("as_of", "")),
            "kind": "recalibration"}

