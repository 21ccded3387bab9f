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


def test_the_cold_start_rule_explores_every_decision_with_its_propensity(specs):
    """The rule has no score to be near to: all its decisions may flip, so both decisions are seen everywhere."""
    spec = _with(specs["lead_scoring"], share=0.3, band=0.0, seed=1)
    n = 4000
    sources = ["referral", "partner", "website_form", "cold_outreach"]
    entities = pl.DataFrame({"entity_ref": [f"e{i}" for i in range(n)],
                             "decided_at": pl.Series(range(n)).cast(pl.Datetime("us", "UTC")),
                             "source": [sources[i % 4] for i in range(n)], "industry": ["retail"] * n,
                             "region": ["nord"] * n, "company_size": [10.0] * n, "pages_visited": [1.0] * n,
                             "email_opens": [0.0] * n, "requested_demo": [False] * n})
    actions = Policy(spec).decide(entities, b"k")
    rule_says_meeting = entities["source"] == "referral"
    took_meeting = actions["decision"] == "propose_meeting"
    flipped = (rule_says_meeting != took_meeting).to_numpy()
    assert 0.27 < flipped.mean() < 0.33                           # share 0.3, far from any threshold
    assert took_meeting.filter(~rule_says_meeting).any() and (~took_meeting).filter(rule_says_meeting).any()
    propensity = actions["propensity"].to_numpy()
    assert np.allclose(propensity[flipped], 0.3) and np.allclose(propensity[~flipped], 0.7)


def test_the_reply_rule_never_explores_into_auto_send(specs):
    spec = _with(specs["reply_acceptance"], share=0.3, band=0.0, seed=1, never_to=("auto_send",))
    n = 500
    entities = pl.DataFrame({"entity_ref": [f"m{i}" for i in range(n)],
                             "decided_at": pl.Series(range(n)).cast(pl.Datetime("us", "UTC")),
                             "intent": ["order_status"] * n, "language": ["de"] * n, "customer_tier": ["standard"] * n,
                             "template_id": ["ord_v1"] * n, "message_length": [200.0] * n, "has_attachment": [False] * n})
    actions = Policy(spec).decide(entities, b"k")
    assert actions["decision"].to_list() == ["human_review"] * n
    assert actions["propensity"].to_list() == [1.0] * n


def test_rows_the_cold_start_rule_decides_explore_at_their_own_share(specs):
    spec = _with(specs["lead_scoring"], share=0.05, band=0.1, seed=3, rule_share=0.02)
    n = 60_000
    scores = np.random.default_rng(2).random(n)
    ruled = np.arange(n) % 2 == 0                  # every other row decided by the rule (say, a new category)
    result = explore(scores, 0.5, _ids(n), spec, everywhere=ruled)
    near = np.abs(scores - 0.5) <= 0.1
    assert abs(result.explored[ruled].mean() - 0.02) < 0.003            # all of them, wherever their score
    assert abs(result.explored[~ruled & near].mean() - 0.05) < 0.01
    assert not result.explored[~ruled & ~near].any()
    share = np.where(ruled, 0.02, 0.05)
    expected = np.where(~(near | ruled), 1.0, np.where(result.explored, share, 1.0 - share))
    assert np.allclose(result.propensity, expected)
    # Without rule_share the rule explores at the model's share, as before.
    same = explore(scores, 0.5, _ids(n), _with(specs["lead_scoring"], share=0.05, band=0.1, seed=3), everywhere=ruled)
    assert abs(same.explored[ruled].mean() - 0.05) < 0.005
