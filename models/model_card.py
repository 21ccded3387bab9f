"""A model card per registered version: what it was trained on, how good it is (with intervals),
what its threshold means in decisions, what it is for and where it is weak.

Intervals resample whole days of the test weeks (a day's leads or e-mails share campaigns,
agents and outages, so resampling single rows would make them too narrow): 95 % percentile
intervals from ``resamples`` draws, seeded by the spec's seed so a card can be reproduced.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.spec import ModelSpec
from models.evaluate import expected_calibration_error, graded_auc
from models.train import TrainedModel

RESAMPLES = 400


def _day_bootstrap(days: np.ndarray, labels: np.ndarray, scores: np.ndarray, decision_scores: np.ndarray,
                   thresholds: float | np.ndarray, seed: int, resamples: int = RESAMPLES) -> dict[str, tuple[float, float]]:
    """95 % intervals of AUC, calibration error, share decided positive and its hit rate, resampling whole days.

    ``scores`` are outcome probabilities (compared with labels); ``decision_scores`` what the threshold applies to.
    ``labels`` may be grades in [0, 1]; ``thresholds`` one number or one per row (per-segment thresholds)."""
    thresholds = np.broadcast_to(np.asarray(thresholds, float), np.shape(scores))
    unique, index = np.unique(days, return_inverse=True)
    members = [np.flatnonzero(index == d) for d in range(unique.size)]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"roc_auc": [], "calibration_error": [], "positive_share": [], "hit_rate": []}
    for _ in range(resamples):
        rows = np.concatenate([members[d] for d in rng.integers(0, unique.size, unique.size)])
        y, s = labels[rows], scores[rows]
        positive = decision_scores[rows] >= thresholds[rows]
        if y.min() != y.max():
            draws["roc_auc"].append(graded_auc(y, s))
        draws["calibration_error"].append(expected_calibration_error(y, s))
        draws["positive_share"].append(positive.mean())
        if positive.any():
            draws["hit_rate"].append(y[positive].mean())
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (float("nan"), float("nan"))
            for k, v in draws.items()}


def _days(test: pl.DataFrame) -> np.ndarray:
    return test.get_column("decided_at").dt.date().cast(pl.Int32).to_numpy()


def card_intervals(spec: ModelSpec, trained: TrainedModel, test: pl.DataFrame) -> dict[str, tuple[float, float]]:
    """The card's day-block bootstrap intervals: its only costly part, computed where the model was trained."""
    return _day_bootstrap(_days(test), np.asarray(trained.test_labels, float), trained.test_scores, trained.policy_scores,
                          trained.thresholds.for_rows(test), spec.training.seed)


def model_card(spec: ModelSpec, trained: TrainedModel, test: pl.DataFrame, lineage: dict, version: str | None = None,
               intervals: dict[str, tuple[float, float]] | None = None) -> str:
    """Markdown for the registry and the run's artifacts. ``test`` is the test slice (``decided_at``, ``label``,
    the segment column); ``intervals`` from ``card_intervals`` if already computed."""
    labels = np.asarray(trained.test_labels, float)
    threshold = trained.threshold.threshold
    row_thresholds = trained.thresholds.for_rows(test)
    days = _days(test)
    intervals = intervals if intervals is not None else card_intervals(spec, trained, test)
    positive = trained.policy_scores >= row_thresholds
    hit_rate = float(labels[positive].mean()) if positive.any() else float("nan")
    metrics = trained.test_metrics

    def row(name: str, value: float, key: str, fmt: str = "{:.3f}") -> str:
        low, high = intervals[key]
        return f"| {name} | {fmt.format(value)} | {fmt.format(low)} – {fmt.format(high)} |"

    title = f"# Model card: {spec.name}" + (f" version {version}" if version else "")
    decide = (f"At threshold **{threshold:.3f}** the model chooses `{spec.positive_decision}` for "
              f"{positive.mean():.1%} of the test {spec.entity}s (otherwise `{spec.negative_decision}`); "
              f"of those, {hit_rate:.1%} had a positive outcome, against {labels.mean():.1%} of all. "
              f"Threshold rule: {trained.threshold.reason}.")
    if trained.thresholds.by_segment:
        own = ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained.thresholds.by_segment.items()))
        decide += (f" Per `{trained.thresholds.column}` (calibrated per segment, shrunk towards the global calibration): "
                   f"{own}; other values use {threshold:.3f}.")
    if spec.objective.kind == "expected_value":
        decide += (f" Value on the calibration weeks: {trained.threshold.objective_value:,.0f} EUR per week "
                   f"({spec.objective.value_per_conversion:,.0f} EUR per conversion, {spec.objective.cost_per_action:,.0f} "
                   "EUR per action).")
    else:
        bound = (f" (its {spec.objective.acceptance_confidence:.0%} Wilson lower bound on the calibration rows)"
                 if spec.objective.acceptance_confidence > 0 else "")
        graded = "graded " if spec.outcomes.graded else "observed "
        decide += (f" Target: {graded}acceptance of `{spec.positive_decision}` at least "
                   f"{spec.objective.target_acceptance:.0%}{bound}.")
    return "\n".join([
        title, "",
        f"**Intended use.** {spec.description} It decides between `{spec.positive_decision}` and "
        f"`{spec.negative_decision}` for one {spec.entity} at a time, from the features in its spec "
        f"({', '.join(spec.feature_names)}); scores are calibrated probabilities.", "",
        "## Data", "",
        f"- Decisions from {lineage.get('data_from')} to {lineage.get('data_to')}, labels as known at {lineage.get('as_of')} "
        f"(a label is mature after {spec.outcomes.maturity_days} days or a terminal outcome).",
        f"- {lineage.get('rows')} labelled rows ({lineage.get('positives')} positive): fit {lineage.get('fit_rows')}, "
        f"calibration {lineage.get('calibration_rows')}, test {lineage.get('test_rows')} (the most recent weeks).",
        f"- Spec hash `{lineage.get('spec_hash')}`, action-id digest `{str(lineage.get('action_digest'))[:16]}`, "
        "enough to rebuild the training set (`loop reproduce`).", "",
        "## Quality on the test weeks", "",
        f"95 % intervals resample whole days ({np.unique(days).size} days, {RESAMPLES} draws).", "",
        "| metric | value | 95 % interval |", "|---|---|---|",
        row("ROC AUC", metrics["roc_auc"], "roc_auc"),
        row("expected calibration error", metrics["calibration_error"], "calibration_error"),
        row(f"share decided `{spec.positive_decision}`", float(positive.mean()), "positive_share", "{:.1%}"),
        row("positive outcomes among them", hit_rate, "hit_rate", "{:.1%}"), "",
        "## What the threshold means", "", decide, "",
        "## Known limits", "",
        "- Trained on outcomes of the decisions earlier policies took: for the other decision the outcome is not "
        "observed, so effects of the decision itself are estimated, not measured.",
        "- Valid for the population it saw: a new category or a shifted feature (see the drift reports) makes the "
        "score less reliable until the next retraining.",
        "- Test weeks are few and recent; intervals are wide when they hold few days or few positives.",
    ]) + "\n"
