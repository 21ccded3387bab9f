"""Safe mode in the decision: rows of a held segment take the spec's negative (safe) decision.

Applied after the threshold and exploration (models/policy.py), so the policy's own decision and its
propensity are known: ``p`` = P(policy takes the positive decision). In a held segment a row keeps
a positive decision only with probability ``explore_share`` (the exploration floor: the loop must
still see whether the segment recovered), drawn independently of exploration: first 8 hex digits
of SHA-256("<patterns.seed>:<action_id>") / 16**8 < explore_share, recomputable by anyone. So
P(positive) = p * explore_share there, and the logged propensity is that (or one minus it for the
negative decision): off-policy estimates stay valid on safe-mode logs.

Where [exploration] ``never_to`` lists the positive decision (an auto-sent reply is never an
experiment), the floor is 0: every row of the held segment takes the safe decision with propensity 1.
For replies that still shows recovery: each held draft goes to human review, which grades it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
import polars as pl

from features.spec import ModelSpec
from models.exploration import uniform_draws


@dataclass(frozen=True)
class SafeMode:
    """The segments (column, value) a model holds at the safe decision."""
    segments: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def from_frame(cls, active: pl.DataFrame) -> SafeMode:
        """From features.safe_mode.active(store, model)."""
        return cls(frozenset(active.select("column", "value").rows()))

    @property
    def keys(self) -> list[str]:
        return sorted(f"{column}={value}" for column, value in self.segments)

    def matches(self, frame: pl.DataFrame) -> pl.Series:
        """Whether each row lies in a held segment (a column the frame lacks holds nothing)."""
        conditions = [pl.col(column).cast(pl.String) == value for column, value in self.segments if column in frame.columns]
        if not conditions:
            return pl.Series("held", [False] * frame.height, dtype=pl.Boolean)
        return frame.select(reduce(lambda a, b: a | b, conditions).fill_null(False).alias("held")).to_series()


def floor_share(spec: ModelSpec) -> float:
    """Share of a held segment's would-be positive decisions that stay positive (0 where never_to forbids it)."""
    return 0.0 if spec.positive_decision in spec.exploration.never_to else spec.patterns.explore_share


def hold(actions: pl.DataFrame, spec: ModelSpec, safe: SafeMode) -> pl.DataFrame:
    """Action rows (``action_id``, ``decision``, ``propensity``, segment columns) with safe mode applied."""
    if not safe.segments or actions.is_empty():
        return actions
    held = safe.matches(actions).to_numpy()
    positive = (actions.get_column("decision") == spec.positive_decision).to_numpy()
    propensity = actions.get_column("propensity").cast(pl.Float64).to_numpy()
    p_policy = np.where(positive, propensity, 1.0 - propensity)
    share = floor_share(spec)
    u = uniform_draws(actions.get_column("action_id"), spec.patterns.seed) if share > 0 else np.ones(actions.height)
    stays = positive & (u < share)
    positive_now = np.where(held, stays, positive)
    p_now = np.where(held, p_policy * share, p_policy)
    return actions.with_columns(
        pl.Series("decision", np.where(positive_now, spec.positive_decision, spec.negative_decision), dtype=pl.String),
        pl.Series("propensity", np.where(positive_now, p_now, 1.0 - p_now), dtype=pl.Float64))
