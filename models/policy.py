"""The decision policy the company's automations call: champion model + threshold, or the cold-start rule.

Every decision becomes an action row of the contract, with the score, threshold, decision and
the propensity of that decision (below 1 only where the spec's exploration may flip it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property, reduce

import numpy as np
import polars as pl

from features.contract import ACTION_SCHEMA, feature_schema
from features.pseudonymise import pseudonymise
from features.spec import ModelSpec
from models.decision_aware import outcome_probability
from models.exploration import explore
from models.registry import LoadedModel
from models.safe_decisions import SafeMode, hold
from models.support import RULE_THRESHOLD, rows_outside, seen_categories
from models.train import predict_scores

RULE_VERSION = "rule"


def rule_expression(spec: ModelSpec) -> pl.Expr:
    """The spec's cold-start rule as a polars expression: positive if any condition holds."""
    conditions = []
    for c in spec.cold_start:
        if c.values:
            conditions.append(pl.col(c.column).is_in(list(c.values)))
        if c.equals is not None:
            conditions.append(pl.col(c.column) == c.equals)
        if c.at_least is not None:
            conditions.append(pl.col(c.column) >= c.at_least)
    if not conditions:
        return pl.lit(False)
    return reduce(lambda a, b: a | b, conditions).fill_null(False)


@dataclass(frozen=True)
class Policy:
    spec: ModelSpec
    model: LoadedModel | None = None
    safe_mode: SafeMode = field(default_factory=SafeMode)    # segments held at the safe decision (models/safe_decisions.py)

    @property
    def version(self) -> str:
        return self.model.version if self.model else RULE_VERSION

    @property
    def threshold(self) -> float:
        """The default threshold (per-segment thresholds: ``thresholds``)."""
        return self.model.threshold if self.model else 0.5

    def frozen(self) -> Policy:
        """The same champion and thresholds as a deployment without the loop runs them: the model decides every
        row (no cold-start rule for categories it never saw, no safe mode). The demo's and the benchmark's
        "frozen" baseline: what a company that stops at deploying its model has."""
        return Policy(dataclasses.replace(self.spec, new_categories="model"), self.model)

    def thresholds(self, frame: pl.DataFrame) -> np.ndarray:
        """The threshold of each row: its segment's, as registered with the model (models/thresholds.py);
        the rule's where the rule decides (a category the model never saw, models/support.py)."""
        return self._thresholds(frame, self.ruled_rows(frame))

    def _thresholds(self, frame: pl.DataFrame, ruled: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(frame.height, self.threshold)
        return np.where(ruled, RULE_THRESHOLD, self.model.segment_thresholds.for_rows(frame))

    def ruled_rows(self, frame: pl.DataFrame) -> np.ndarray:
        """Rows the cold-start rule decides: all before a model exists; with one, those with a category it never saw."""
        if self.model is None:
            return np.ones(frame.height, dtype=bool)
        if self.spec.new_categories != "rule":
            return np.zeros(frame.height, dtype=bool)
        return rows_outside(self._seen_categories, frame)

    @cached_property
    def _seen_categories(self) -> dict[str, list[str]]:
        # Once per policy: the scoring service decides single rows with the same policy many times a second.
        return seen_categories(self.model.estimator, self.spec) if self.model is not None else {}

    def _rule_scores(self, frame: pl.DataFrame) -> np.ndarray:
        # with_columns, not select: a rule without conditions is a literal, which select would not broadcast.
        return frame.with_columns(rule_expression(self.spec).cast(pl.Float64).alias("__rule"))["__rule"].to_numpy()

    def scores(self, frame: pl.DataFrame) -> np.ndarray:
        return self._scores(frame, self.ruled_rows(frame))

    def _scores(self, frame: pl.DataFrame, ruled: np.ndarray) -> np.ndarray:
        if self.model is None:
            return self._rule_scores(frame)
        scores = predict_scores(self.model.estimator, frame, self.spec)
        return np.where(ruled, self._rule_scores(frame), scores) if ruled.any() else scores

    def outcome_probabilities(self, frame: pl.DataFrame, decisions: pl.Series) -> np.ndarray:
        """P(positive outcome | features, the given decision); the rule's own 0/1 before a model exists."""
        if self.model is None:
            return self.scores(frame)
        return outcome_probability(self.model.estimator, frame.with_columns(decisions.alias("decision")), self.spec)

    def decisions(self, scores: np.ndarray, frame: pl.DataFrame) -> pl.Series:
        """Greedy decisions (no exploration) for the rows of ``frame`` with these scores."""
        positive = np.asarray(scores) >= self.thresholds(frame)
        return pl.Series("decision", np.where(positive, self.spec.positive_decision, self.spec.negative_decision))

    def decide(self, entities: pl.DataFrame, key: bytes, action_ids: pl.Series | None = None) -> pl.DataFrame:
        """Score entities (``entity_ref``, ``decided_at``, the spec's features) and return action rows.

        Raw identifiers are pseudonymised here, before the action exists anywhere else. Without
        ``action_ids`` each action gets a deterministic id (one entity decided at one instant by one
        model is one action). Decisions near the threshold explore (models/exploration.py); every
        action carries the propensity of its decision.
        """
        ruled = self.ruled_rows(entities)     # once: scores, thresholds and exploration all depend on it
        scores = self._scores(entities, ruled)
        entity_id = pseudonymise(entities.get_column("entity_ref"), key).alias("entity_id")
        frame = entities.with_columns(entity_id)
        if action_ids is None:
            action_ids = frame.select(pl.format("{}-{}-{}", pl.lit(self.spec.name[:4]), pl.col("entity_id").str.slice(4, 16),
                                                pl.col("decided_at").dt.epoch("ms"))).to_series()
        thresholds = self._thresholds(frame, ruled)
        explored = explore(scores, thresholds, action_ids, self.spec, everywhere=ruled)
        actions = frame.with_columns(
            action_ids.alias("action_id"),
            pl.Series("score", scores, dtype=pl.Float64),
            explored.decisions,
            pl.lit(self.spec.name).alias("model"),
            pl.lit(self.version).alias("model_version"),
            pl.Series("threshold", thresholds, dtype=pl.Float64),
            pl.Series("propensity", explored.propensity, dtype=pl.Float64),
        )
        actions = actions.select(list(ACTION_SCHEMA) + list(feature_schema(self.spec)))
        return hold(actions, self.spec, self.safe_mode)
