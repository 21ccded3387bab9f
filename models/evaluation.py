"""Challenger versus champion on the same most recent labelled rows, and the promotion decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from features.spec import ModelSpec
from features.training_set import Split
from models.evaluate import classification_metrics
from models.policy import Policy
from models.promotion import PromotionDecision, decide_promotion, flip_share
from models.registry import LoadedModel
from models.train import TrainedModel


@dataclass(frozen=True)
class Comparison:
    challenger: dict[str, float]
    champion: dict[str, float] | None
    flip_share: float | None
    decision: PromotionDecision


def compare_with_champion(spec: ModelSpec, trained: TrainedModel, split: Split, champion: LoadedModel | None,
                          recent: pl.DataFrame, challenger: LoadedModel) -> Comparison:
    """Score the champion on the challenger's test slice; measure how many recent decisions would flip."""
    champion_metrics = None
    flips = None
    if champion is not None:
        champion_scores = Policy(spec, champion).scores(split.test)
        champion_metrics = classification_metrics(split.test.get_column("label").to_numpy(), champion_scores)
        if recent.height:
            old = Policy(spec, champion)
            new = Policy(spec, challenger)
            flips = flip_share(old.decisions(old.scores(recent)), new.decisions(new.scores(recent)))
    decision = decide_promotion(spec.gates, trained.test_metrics, champion_metrics, split.test.height, flips)
    return Comparison(trained.test_metrics, champion_metrics, flips, decision)


def comparison_table(comparison: Comparison) -> list[dict[str, object]]:
    """Rows for a Prefect table artifact: one per metric."""
    rows = []
    for metric in ("roc_auc", "average_precision", "brier", "log_loss", "calibration_error", "rows"):
        challenger = comparison.challenger.get(metric, np.nan)
        champion = comparison.champion.get(metric, np.nan) if comparison.champion else np.nan
        rows.append({"metric": metric, "challenger": round(float(challenger), 4),
                     "champion": None if not np.isfinite(champion) else round(float(champion), 4)})
    return rows
