"""Exploration: a deterministic, auditable share of near-threshold decisions is flipped, with logged propensities."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import polars as pl

from features.spec import Exploration
from models.exploration import explore
from models.policy import Policy


def _with(spec, **exploration):
    return dataclasses.replace(spec, exploration=Exploration(**exploration))


def _ids(n: int) -> pl.Series:
    return pl.Series("action_id", [f"act-{i:06d}" for i in range(n)])


def _recomputed_u(action_id: str, seed: int) -> float:
    """The documented rule, by hand: first 8 hex digits of SHA-256('<seed>:<action_id>') / 16**8."""
    return int(hashlib.sha256(f"{seed}:{action_id}".encode()).hexdigest()[:8], 16) / 16 ** 8


def test_only_decisions_near_the_threshold_are_flipped_at_the_configured_share(specs):
    spec = _with(specs["lead_scoring"], share=0.05, band=0.1, seed=3)
    scores = np.random.default_rng(0).random(40_000)
    result = explore(scores, 0.5, _ids(40_000), spec)
    near = np.abs(scores - 0.5) <= 0.1
    assert not result.explored[~near].any()
    assert abs(result.explored[near].mean() - 0.05) < 0.01
    greedy = np.where(scores >= 0.5, "propose_meeting", "nurture")
    taken = result.decisions.to_numpy()
    assert ((taken != greedy) == result.explored).all()
    # Propensity of the decision taken, from the definition: 1 outside the band, share if flipped, 1 - share if not.
    expected = np.where(~near, 1.0, np.where(result.explored, 0.05, 0.95))
    assert np.allclose(result.propensity, expected)


def test_the_flips_can_be_recomputed_by_anyone_from_the_seed_and_the_action_id(specs):
    spec = _with(specs["lead_scoring"], share=0.2, band=1.0, seed=42)
    ids = _ids(2_000)
    scores = np.full(2_000, 0.7)               # all greedy-positive, all near
    result = explore(scores, 0.5, ids, spec)
    by_hand = np.array([_recomputed_u(i, 42) < 0.2 for i in ids.to_list()])
    assert (result.explored == by_hand).all()
    again = explore(scores, 0.5, ids, spec)
    assert (again.explored == result.explored).all()
    other_seed = explore(scores, 0.5, ids, _with(specs["lead_scoring"], share=0.2, band=1.0, seed=43))
    assert (other_seed.explored != result.explored).any()


def test_exploration_never_takes_a_decision_the_spec_excludes(specs):
    spec = _with(specs["reply_acceptance"], share=0.1, band=0.2, seed=1, never_to=("auto_send",))
    scores = np.random.default_rng(1).random(20_000)
    result = explore(scores, 0.8, _ids(20_000), spec)
    greedy_send = scores >= 0.8
    taken_send = (result.decisions == "auto_send").to_numpy()
    assert not (taken_send & ~greedy_send).any()             # nothing doubtful is auto-sent by exploration
    assert (greedy_send & ~taken_send).any()                  # but confident drafts do go to a person
    near_negative = (np.abs(scores - 0.8) <= 0.2) & ~greedy_send
    assert np.allclose(result.propensity[near_negative], 1.0)  # no chance of a flip: taken with certainty


def test_the_cold_start_rule_does_not_explore_and_logs_certainty(specs):
    spec = _with(specs["lead_scoring"], share=0.3, band=0.2, seed=1)
    entities = pl.DataFrame({"entity_ref": ["a", "b", "c"], "decided_at": pl.Series([0, 1, 2]).cast(pl.Datetime("us", "UTC")),
                             "source": ["referral", "partner", "website_form"], "industry": ["retail"] * 3,
                             "region": ["nord"] * 3, "company_size": [10.0] * 3, "pages_visited": [1.0] * 3,
                             "email_opens": [0.0] * 3, "requested_demo": [False, True, False]})
    actions = Policy(spec).decide(entities, b"k")
    assert actions["propensity"].to_list() == [1.0, 1.0, 1.0]
    assert actions["decision"].to_list() == ["propose_meeting", "propose_meeting", "nurture"]
