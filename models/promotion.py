"""Promotion gates, human approval, rollback, and the audit trail of every decision.

The gates compare challenger and champion on the same most recent labelled window. Every
decision, promoted or not, is written with its reasons to the audit table and to the version's
MLflow tags.

With ``Evidence`` (models/gates.py) the comparison is statistical: a challenger whose paired AUC
interval lies wholly below -auc_tolerance is kept; one the logs do not cover (coverage or ESS of
its off-policy estimate under the spec's minimum) goes to a person; otherwise it is promoted only
when the paired interval of its value gain (doubly robust) clears ``min_value_improvement`` at the
weekly level, and "keep the champion, not enough evidence" is recorded when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

from features.spec import Gates
from features.store import EventStore
from models.gates import Evidence, coverage_problems, value_verdict
from models.registry import CHALLENGER, CHAMPION, Registry

Action = Literal["promote", "keep", "await_approval"]
# Who a challenger would replace: the champion, or for a spec's first model the cold-start rule.
CHAMPION_INCUMBENT, RULE = "champion", "cold-start rule"


@dataclass(frozen=True)
class PromotionDecision:
    action: Action
    reasons: tuple[str, ...]
    flip_share: float | None = None


def decide_promotion(gates: Gates, challenger: dict[str, float], champion: dict[str, float] | None,
                     labelled_rows: int, flip_share: float | None, evidence: Evidence | None = None) -> PromotionDecision:
    """Apply the spec's gates. ``champion`` is None for a spec's first model (absolute gates only)."""
    reasons: list[str] = []
    if labelled_rows < gates.min_labelled_rows:
        return PromotionDecision("keep", (f"not enough evidence: {labelled_rows} labelled rows in the comparison window, "
                                          f"gate needs {gates.min_labelled_rows}",), flip_share)
    auc, ece = challenger["roc_auc"], challenger["calibration_error"]
    failed = []
    if not np.isfinite(auc):
        failed.append("ROC AUC undefined (one outcome class only)")
    if ece > gates.max_calibration_error:
        failed.append(f"calibration error {ece:.3f} above bound {gates.max_calibration_error}")
    if champion is None:
        if auc < gates.min_auc:
            failed.append(f"ROC AUC {auc:.3f} below the first-model gate {gates.min_auc}")
        if failed:
            return PromotionDecision("keep", tuple(failed), flip_share)
        reasons.append(f"first model: ROC AUC {auc:.3f} >= {gates.min_auc}, "
                       f"calibration error {ece:.3f} <= {gates.max_calibration_error}")
        if not gates.first_model_against_rule or evidence is None or "value_dr" not in evidence.differences:
            return _flip_gate(gates, reasons, flip_share, RULE)
        # The incumbent is the cold-start rule: the first model replaces it on the same value evidence a
        # challenger needs against a champion.
        return _value_gate(gates, evidence, reasons, flip_share, RULE)
    if auc < champion["roc_auc"] - gates.auc_tolerance:
        failed.append(f"ROC AUC {auc:.3f} worse than champion {champion['roc_auc']:.3f} beyond tolerance {gates.auc_tolerance}")
    better_brier = challenger["brier"] < champion["brier"]
    better_logloss = challenger["log_loss"] < champion["log_loss"]
    if not (better_brier or better_logloss):
        failed.append(f"not better on Brier ({challenger['brier']:.4f} vs {champion['brier']:.4f}) "
                      f"or log loss ({challenger['log_loss']:.4f} vs {champion['log_loss']:.4f})")
    paired_auc = evidence.differences.get("roc_auc") if evidence else None
    if paired_auc is not None and paired_auc.high < -gates.auc_tolerance:
        failed.append(f"ROC AUC clearly worse: paired difference {paired_auc.difference:+.3f}, interval "
                      f"[{paired_auc.low:+.3f}, {paired_auc.high:+.3f}] below -{gates.auc_tolerance}")
    if failed:
        return PromotionDecision("keep", tuple(failed), flip_share)
    reasons.append(f"ROC AUC {auc:.3f} vs champion {champion['roc_auc']:.3f}; Brier {challenger['brier']:.4f} vs "
                   f"{champion['brier']:.4f}; log loss {challenger['log_loss']:.4f} vs {champion['log_loss']:.4f}; "
                   f"calibration error {ece:.3f}")
    if evidence is not None and "dr" in evidence.challenger_value and "value_dr" in evidence.differences:
        return _value_gate(gates, evidence, reasons, flip_share, CHAMPION_INCUMBENT)
    return _flip_gate(gates, reasons, flip_share, CHAMPION_INCUMBENT)


def _value_gate(gates: Gates, evidence: Evidence, reasons: list[str], flip_share: float | None,
                incumbent: str) -> PromotionDecision:
    """Coverage first, then the paired value difference against the incumbent, then the flip share."""
    problems = coverage_problems(gates, evidence.challenger_value["dr"])
    verdict, text = value_verdict(gates, evidence.differences["value_dr"], evidence.one_sided_alpha, incumbent)
    if problems:
        # The value estimate leans on decisions the logs never saw: no number can vouch for it.
        return PromotionDecision("await_approval", (*reasons, *problems, text, "needs a person's approval"), flip_share)
    if verdict != "better":
        return PromotionDecision("keep", (text, *reasons), flip_share)
    reasons.append(text)
    return _flip_gate(gates, reasons, flip_share, incumbent)


def _flip_gate(gates: Gates, reasons: list[str], flip_share: float | None, incumbent: str) -> PromotionDecision:
    """More of the incumbent's recent decisions flipping than its limit waits for a person (the rule's may be None)."""
    limit = gates.first_model_max_flip_share if incumbent == RULE else gates.max_decision_flip_share
    if flip_share is not None and limit is not None and flip_share > limit:
        return PromotionDecision("await_approval", (*reasons, f"{flip_share:.1%} of the {incumbent}'s recent decisions would flip, "
                                                    f"more than {limit:.0%}: needs a person's approval"), flip_share)
    return PromotionDecision("promote", tuple(reasons), flip_share)


def flip_share(old_decisions: pl.Series, new_decisions: pl.Series) -> float:
    if old_decisions.len() == 0:
        return 0.0
    return float((old_decisions != new_decisions).mean())


@dataclass
class AuditTrail:
    """Writes decisions to the store's audit table and the model version's tags."""

    store: EventStore
    registry: Registry
    now: datetime
    rows: list[dict] = field(default_factory=list)

    def record(self, model: str, version: str | None, event: str, reasons: tuple[str, ...] | list[str],
               actor: str = "loop", week: str = "") -> None:
        text = "; ".join(reasons)
        self.store.append_audit(pl.DataFrame([{"at": self.now, "model": model, "version": version or "",
                                               "event": event, "actor": actor, "reasons": text, "week": week,
                                               "recorded_at": datetime.now(UTC)}]))
        if version:
            self.registry.tag_version(model, version, {"decision": event, "decision_by": actor,
                                                        "decision_reasons": text[:4900], "decision_at": self.now.isoformat()})


def apply_decision(decision: PromotionDecision, model: str, version: str, registry: Registry, audit: AuditTrail,
                   week: str) -> str:
    """Move aliases as the decision says; returns the event recorded."""
    if decision.action == "promote":
        previous = registry.version_by_alias(model, CHAMPION)
        if previous is not None:
            registry.tag_version(model, version, {"previous_champion": previous.version})
        registry.set_alias(model, CHAMPION, version)
        registry.clear_alias(model, CHALLENGER)
        event = "promoted"
    elif decision.action == "await_approval":
        registry.set_alias(model, CHALLENGER, version)
        event = "awaiting_approval"
    else:
        event = "kept_champion"
    audit.record(model, version, event, decision.reasons, week=week)
    return event


class ApprovalError(ValueError):
    """An approval, rejection or rollback that does not fit the registry's state: refused, nothing changed."""


Answer = Literal["approve", "reject"]
EXPIRED = "approval_expired"
TIMEOUT_ACTOR = "timeout"


def is_pending(model: str, version: str, registry: Registry) -> bool:
    """Whether this version still waits for a person (it holds the challenger alias)."""
    pending = registry.version_by_alias(model, CHALLENGER)
    return pending is not None and str(pending.version) == str(version)


# What a recorded decision tag says about a version that no longer waits, for the refusal message.
_DECIDED = {"promoted": "it was promoted by the gates", "approved": "it was approved", "rejected": "it was rejected",
            "approval_expired": "its approval request expired", "kept_champion": "the gates kept the champion instead",
            "rolled_back": "it was restored by a rollback"}


def _existing_version(model: str, version: str, registry: Registry):
    """The registered version, or a refusal that names the versions there are."""
    found = registry.get_version(model, version) if str(version).isdigit() else None
    if found is None:
        known = [str(v.version) for v in registry.versions(model)]
        raise ApprovalError(f"{model} has no version '{version}' in the registry "
                            f"({'versions: ' + ', '.join(known) if known else 'no versions registered yet'})")
    return found


def _require_pending(model: str, version: str, registry: Registry) -> None:
    if is_pending(model, version, registry):
        return
    found = _existing_version(model, version, registry)
    champion = registry.version_by_alias(model, CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        state = "it is the champion"
    else:
        decision = found.tags.get("decision")
        state = _DECIDED.get(decision, "it was never put up for approval")
        if decision in _DECIDED and found.tags.get("decision_by"):
            state += f" (by {found.tags['decision_by']})"
    pending = registry.version_by_alias(model, CHALLENGER)
    raise ApprovalError(f"{model} version {version} is not waiting for approval: {state}; "
                        f"waiting for approval: {'version ' + str(pending.version) if pending else 'none'}")


def approve(model: str, version: str, by: str, reason: str, registry: Registry, audit: AuditTrail, week: str = "") -> None:
    # Under the store's write lock, check and change are one step: the command line and the approval
    # flow in the Prefect UI may answer the same request at once, and only the first may count.
    with audit.store.writer():
        _require_pending(model, version, registry)
        previous = registry.version_by_alias(model, CHAMPION)
        if previous is not None:
            registry.tag_version(model, version, {"previous_champion": previous.version})
        registry.set_alias(model, CHAMPION, version)
        registry.clear_alias(model, CHALLENGER)
        audit.record(model, version, "approved", [reason or "approved"], actor=by, week=week)


def reject(model: str, version: str, by: str, reason: str, registry: Registry, audit: AuditTrail, week: str = "") -> None:
    with audit.store.writer():
        _require_pending(model, version, registry)
        registry.clear_alias(model, CHALLENGER)
        audit.record(model, version, "rejected", [reason or "rejected"], actor=by, week=week)


def answer(model: str, version: str, decision: Answer, by: str, reason: str, registry: Registry, audit: AuditTrail,
           week: str = "") -> str:
    """A person's answer, from the command line or the Prefect UI form: the event recorded."""
    (approve if decision == "approve" else reject)(model, version, by, reason, registry, audit, week)
    return "approved" if decision == "approve" else "rejected"


def expire(model: str, version: str, timeout_hours: float, registry: Registry, audit: AuditTrail, week: str = "") -> None:
    """A request nobody answered in time counts as rejected: the champion stays, and the audit says why."""
    with audit.store.writer():
        _require_pending(model, version, registry)
        registry.clear_alias(model, CHALLENGER)
        audit.record(model, version, EXPIRED, [f"not answered within {timeout_hours:g} h: expired as rejected"],
                     actor=TIMEOUT_ACTOR, week=week)


def overdue_approvals(store: EventStore, registry: Registry, timeouts: dict[str, float], now: datetime) -> list[tuple[str, str, str]]:
    """Requests waiting longer than their spec's time-out: (model, version, week).

    Waiting time is wall-clock time since the request was recorded (`recorded_at`), not the loop's
    as-of time: a person's answer takes real hours, also when a run is replayed for an old week.
    """
    overdue = []
    for model, hours in timeouts.items():
        pending = registry.version_by_alias(model, CHALLENGER)
        if pending is None:
            continue
        asked = (store.scan_audit().filter((pl.col("model") == model) & (pl.col("version") == str(pending.version))
                                           & (pl.col("event") == "awaiting_approval") & pl.col("recorded_at").is_not_null())
                 .sort("recorded_at").collect())
        if asked.height and now - asked["recorded_at"][-1] >= timedelta(hours=hours):
            overdue.append((model, str(pending.version), asked["week"][-1] or ""))
    return overdue


def expire_overdue(store: EventStore, registry: Registry, timeouts: dict[str, float], now: datetime) -> list[tuple[str, str]]:
    """Expire every overdue request: the backstop for an approval run that died while it waited.

    Safe next to a waiting approval run: whichever expires (or answers) first records; the other
    finds the version no longer waiting.
    """
    expired = []
    for model, version, week in overdue_approvals(store, registry, timeouts, now):
        try:
            expire(model, version, timeouts[model], registry, AuditTrail(store, registry, now), week)
        except ApprovalError:
            continue
        expired.append((model, version))
    return expired


def rollback(model: str, by: str, reason: str, registry: Registry, audit: AuditTrail, week: str = "") -> str:
    """Restore the champion that the current one replaced; returns the restored version.

    Refused (ApprovalError, nothing changed) when there is no champion, when the champion replaced
    none (the first model, which replaced the cold-start rule), or when the version it replaced is
    gone from the registry. A second rollback walks one step further back, as far as there are steps.
    """
    # Under the store's write lock, like approve: a rollback and an approval must not interleave.
    with audit.store.writer():
        current = registry.version_by_alias(model, CHAMPION)
        if current is None:
            raise ApprovalError(f"{model} has no champion to roll back (the spec's cold-start rule decides)")
        previous = current.tags.get("previous_champion")
        if not previous:
            raise ApprovalError(f"{model} champion version {current.version} replaced no earlier champion: "
                                f"there is no previous champion to restore")
        if registry.get_version(model, previous) is None:
            raise ApprovalError(f"{model} champion version {current.version} replaced version {previous}, "
                                f"which is no longer in the registry: nothing to restore")
        registry.set_alias(model, CHAMPION, previous)
        audit.record(model, previous, "rolled_back", [f"restored from version {current.version}", reason or "rollback"],
                     actor=by, week=week)
    return previous
