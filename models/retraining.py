"""The CPU-heavy half of a retraining, as one function a task runner can ship to another process.

It only reads (the stored rows, the champion from the registry) and computes: the training set, fit
+ calibration + threshold, the comparison with the champion (scores, off-policy values, bootstrap
intervals), the model card's intervals and the plots. Nothing is written, so several models can run
it at once on different workers; registering the version, the gates' decision and the audit stay
with the caller, which holds the MLflow client and the store's write lock.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from features.spec import ModelSpec
from features.store import EventStore
from features.training_set import NotEnoughData, Split, time_split
from features.windows import labelled_frame, recent_actions, training_lineage
from models.evaluation import Comparison, compare_with_champion
from models.model_card import card_intervals
from models.plots import calibration_plot, threshold_plot
from models.registry import CHAMPION, LoadedModel, Registry, threshold_tag
from models.train import TrainedModel, fit_model

# The few test rows logged with the model as its input example (model features only).
EXAMPLE_ROWS = 5
# The challenger has no registry version until the caller registers it; the comparison does not need one.
UNREGISTERED = "challenger"


@dataclass(frozen=True)
class Challenger:
    """A trained challenger and everything the caller needs to register, gate and report it."""

    model: str
    trained: TrainedModel
    lineage: dict[str, Any]       # the training set's lineage with the split sizes
    sizes: dict[str, int]
    example: pl.DataFrame         # a few test rows: the registered model's input example
    test: pl.DataFrame            # the test slice, for the model card (days, segments)
    card_intervals: dict[str, tuple[float, float]]
    comparison: Comparison
    plots: dict[str, bytes]       # PNG content by file name
    seconds: float                # wall time of this half
    trained_on: str = ""          # where it ran (a Dask worker's address, or a process)


def prepare_challenger(store: EventStore, registry: Registry, spec: ModelSpec, as_of: datetime) -> Challenger | str:
    """Train a challenger on mature labels and compare it with the current champion; or say why there is none.

    Too few labelled rows is a normal state early on (returned as the reason, not raised).
    """
    started = time.perf_counter()
    labelled = labelled_frame(store, spec, as_of)
    lineage = training_lineage(store, spec, labelled, as_of)
    try:
        split = time_split(labelled, spec)
        trained = fit_model(split, spec)
    except NotEnoughData as exc:
        return str(exc)
    return package_challenger(store, registry, spec, as_of, split, trained, lineage, started)


def package_challenger(store: EventStore, registry: Registry, spec: ModelSpec, as_of: datetime, split: Split,
                       trained: TrainedModel, lineage: dict[str, Any], started: float) -> Challenger:
    """Compare a trained model (a retraining or a recalibration) with the champion and gather what registering needs."""
    champion = registry.load(spec.name, CHAMPION) if registry.version_by_alias(spec.name, CHAMPION) else None
    # The estimator the caller registers and the thresholds as the version will carry them: the policy as it would be served.
    candidate = LoadedModel(spec.name, UNREGISTERED, trained.estimator, float(threshold_tag(trained.threshold.threshold)), "",
                            trained.thresholds)
    comparison = compare_with_champion(spec, trained, split, champion, recent_actions(store, spec, as_of), candidate)
    return Challenger(model=spec.name, trained=trained, lineage={**lineage, **split.sizes()}, sizes=split.sizes(),
                      example=split.test.head(EXAMPLE_ROWS), test=split.test,
                      card_intervals=card_intervals(spec, trained, split.test), comparison=comparison,
                      plots=_plots(spec, trained), seconds=time.perf_counter() - started)


def _plots(spec: ModelSpec, trained: TrainedModel) -> dict[str, bytes]:
    """The calibration plot and the threshold curve as PNG bytes (a worker's temp folder is not the caller's)."""
    with tempfile.TemporaryDirectory(prefix="loop-plots-") as tmp:
        folder = Path(tmp)
        paths = [
            calibration_plot(trained.test_labels, trained.test_scores, f"{spec.name}: calibration on test weeks",
                             folder / "calibration.png"),
            threshold_plot(trained.threshold.curve, trained.threshold.threshold, f"{spec.name}: objective by threshold",
                           folder / "threshold_curve.png"),
        ]
        return {path.name: path.read_bytes() for path in paths}
