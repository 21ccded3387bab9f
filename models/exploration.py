"""Exploration with logged propensities: a small, auditable share of decisions near the threshold is flipped.

A loop that only ever sees outcomes of its own decisions cannot learn what the other decision
would have done for the leads it nurtured or the replies it sent unread. So, for decisions whose
score lies within ``band`` of the threshold, the policy takes the other decision with probability
``share`` (the spec's ``[exploration]``), and never flips *into* a decision the spec lists in
``never_to`` (an auto-sent reply is not an experiment: exploration may route a confident draft to
a person, never send a doubtful one).

The flip is deterministic given the seed and the action id: ``u = first 8 hex digits of
SHA-256("<seed>:<action_id>") / 16**8``, flipped when ``u < share``. Anyone can recompute which
decisions were exploratory. Every action records its ``propensity``, the probability with which
the policy took the decision it took; ``positive_probability`` gives the same for any decision,
so an off-policy estimator can ask what a *candidate* policy would have done on logged rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import polars_hash  # noqa: F401 - registers the `chash` expression namespace

from features.spec import Exploration, ModelSpec


@dataclass(frozen=True)
class Explored:
    decisions: pl.Series        # the decision taken
    propensity: np.ndarray      # probability of the decision taken under the policy
    explored: np.ndarray        # True where the decision differs from the greedy one


def uniform_draws(action_ids: pl.Series, seed: int) -> np.ndarray:
    """One reproducible number in [0, 1) per action id (SHA-256, stable across versions and machines)."""
    digest = (action_ids.cast(pl.String).to_frame("id")
              .select(pl.format("{}:{}", pl.lit(str(seed)), pl.col("id")).chash.sha2_256().str.slice(0, 8)
                      .str.to_integer(base=16)).to_series())
    return digest.cast(pl.Float64).to_numpy() / 16.0 ** 8


def positive_probability(scores: np.ndarray, threshold: float | np.ndarray, spec: ModelSpec,
                         everywhere: bool | np.ndarray = False) -> np.ndarray:
    """P(policy takes the positive decision | score): 0 or 1 outside the band, 1 - share or share inside.

    ``threshold`` is one number or one per row (per-segment thresholds). ``everywhere`` (for all rows or
    per row) treats a decision as near the threshold: the cold-start rule has no score to be near to, and exploring all
    of its decisions is what lets the first decision-aware model see both decisions across the
    features (a deterministic rule never nurtures a referral).
    """
    exploration: Exploration = spec.exploration
    scores = np.asarray(scores, dtype=float)
    greedy_positive = scores >= threshold
    ruled = np.broadcast_to(np.asarray(everywhere, dtype=bool), scores.shape)
    near = (np.abs(scores - threshold) <= exploration.band) | ruled
    rule_share = exploration.share if exploration.rule_share is None else exploration.rule_share
    share = np.where(ruled, rule_share, exploration.share)
    may_turn_negative = spec.negative_decision not in exploration.never_to
    may_turn_positive = spec.positive_decision not in exploration.never_to
    probability = greedy_positive.astype(float)
    turn_negative = near & greedy_positive & may_turn_negative
    turn_positive = near & ~greedy_positive & may_turn_positive
    probability[turn_negative] = 1.0 - share[turn_negative]
    probability[turn_positive] = share[turn_positive]
    return probability


def explore(scores: np.ndarray, threshold: float | np.ndarray, action_ids: pl.Series, spec: ModelSpec,
            everywhere: bool | np.ndarray = False) -> Explored:
    """The decisions with exploration applied, and the propensity of each."""
    p_positive = positive_probability(scores, threshold, spec, everywhere)
    greedy_positive = np.asarray(scores, dtype=float) >= threshold
    # A decision is random only where 0 < p < 1; there u < min(p, 1 - p) takes the less likely side.
    explores = spec.exploration.share > 0 or bool(spec.exploration.rule_share)
    u = uniform_draws(action_ids, spec.exploration.seed) if explores else np.ones(len(p_positive))
    random = (p_positive > 0) & (p_positive < 1)
    flipped = random & (u < np.minimum(p_positive, 1 - p_positive))
    positive = np.where(flipped, ~greedy_positive, greedy_positive)
    propensity = np.where(positive, p_positive, 1.0 - p_positive)
    decisions = pl.Series("decision", np.where(positive, spec.positive_decision, spec.negative_decision))
    return Explored(decisions, propensity, flipped)
