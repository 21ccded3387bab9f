"""Promotion gates on constructed challenger/champion metrics: promote, keep, wait for approval."""

from __future__ import annotations

import math

from models.promotion import decide_promotion

GOOD = {"roc_auc": 0.80, "brier": 0.090, "log_loss": 0.30, "calibration_error": 0.02}


def test_first_model_is_promoted_when_it_passes_the_absolute_gates(specs):
    gates = specs["lead_scoring"].gates
    assert decide_promotion(gates, GOOD, None, 5000, None).action == "promote"


def test_first_model_is_kept_out_when_it_ranks_poorly_or_is_miscalibrated(specs):
    gates = specs["lead_scoring"].gates
    weak = decide_promotion(gates, GOOD | {"roc_auc": gates.min_auc - 0.01}, None, 5000, None)
    assert weak.action == "keep" and "below the first-model gate" in weak.reasons[0]
    uncalibrated = decide_promotion(gates, GOOD | {"calibration_error": gates.max_calibration_error + 0.01}, None, 5000, None)
    assert uncalibrated.action == "keep" and "calibration error" in uncalibrated.reasons[0]
    undefined = decide_promotion(gates, GOOD | {"roc_auc": math.nan}, None, 5000, None)
    assert undefined.action == "keep"


def test_too_few_labelled_rows_keeps_the_champion_for_lack_of_evidence(specs):
    gates = specs["lead_scoring"].gates
    decision = decide_promotion(gates, GOOD, GOOD, gates.min_labelled_rows - 1, 0.0)
    assert decision.action == "keep" and "not enough evidence" in decision.reasons[0]


def test_better_challenger_is_promoted(specs):
    gates = specs["lead_scoring"].gates
    champion = GOOD | {"brier": 0.095, "log_loss": 0.32}
    assert decide_promotion(gates, GOOD, champion, 5000, 0.05).action == "promote"


def test_challenger_worse_on_auc_beyond_tolerance_is_kept_out(specs):
    gates = specs["lead_scoring"].gates
    champion = GOOD | {"roc_auc": GOOD["roc_auc"] + gates.auc_tolerance + 0.005, "brier": 0.2, "log_loss": 0.6}
    decision = decide_promotion(gates, GOOD, champion, 5000, 0.0)
    assert decision.action == "keep" and "worse than champion" in decision.reasons[0]


def test_challenger_not_better_on_brier_or_log_loss_is_kept_out(specs):
    gates = specs["lead_scoring"].gates
    decision = decide_promotion(gates, GOOD, GOOD, 5000, 0.0)
    assert decision.action == "keep" and "not better on Brier" in decision.reasons[0]


def test_large_change_in_decisions_waits_for_approval(specs):
    gates = specs["lead_scoring"].gates
    champion = GOOD | {"brier": 0.095, "log_loss": 0.32}
    decision = decide_promotion(gates, GOOD, champion, 5000, gates.max_decision_flip_share + 0.05)
    assert decision.action == "await_approval" and "approval" in decision.reasons[-1]
