"""The guard after promotion: does the new champion deliver the gain that justified its promotion?

A promotion rests on an off-policy estimate: the paired doubly robust value gain of the challenger's
policy over the champion's on the test weeks (``diff_value_dr_*`` on the training run, EUR per
decision), whose lower bound cleared ``min_value_improvement``. For ``[gates] guard_weeks`` after
the promotion, the weekly monitor estimates the same gain again on what happened since: the
labelled decisions the new champion took in those weeks (its own logs, with exploration and the
logged propensities), both policies scored on them (models/ope.py; paired week or entity blocks,
cross-fitted outcome model, one-sided at the gates' weekly alpha).

**Rule** (g = the gain on the post-promotion logs with interval [g_low, g_high]; G = the gain claimed
at promotion): roll back when

    g_high < G - guard_margin    (the new logs clearly contradict the claim, by more than the margin)
    and g_low <= min_value_improvement    (and no longer show the gain a promotion needs).

Rows of segments held in safe mode are left out (there neither champion decides). The claim was
measured with such rows, often where most of its gain came from (the segment that went wrong), so
while rows were left out the bar is the previous champion itself: roll back only when
g_high < -guard_margin, the new champion clearly worse than the previous one.

A champion that delivers less than claimed but is still clearly better than the previous one stays.
Before ``min_labelled_rows`` labelled post-promotion decisions exist the guard waits. When the logs
cannot vouch for the previous policy's decisions (coverage or ESS of its estimate under the gates'
minimum) no automatic rollback happens: the report says so and a person may run `loop rollback`.
The guard watches a promotion until its guard weeks' labels can be mature (``guard_weeks`` weeks plus
``maturity_days`` after it), then stops. A restored champion (a rollback) is not guarded.

Labels are the training set's mature labels (features/training_set.py), as on the test weeks behind
the claim: for a model with a long maturity window (leads: 30 days) the rows of the first weeks
after a promotion that are already labelled are the ones that closed early.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from features.spec import ModelSpec
from models.exploration import positive_probability
from models.gates import (
    coverage_problems,
    estimate_settings,
    interval_note,
    weekly_alpha,
)
from models.ope import Difference, OPEResult, estimate, logged_rows, value_difference
from models.safe_decisions import SafeMode

Action = Literal["rollback", "held", "uncovered", "wait"]
ACTOR = "guard"
# How far before the promotion the outcome model's rows reach (models/ope.py keeps the latest OUTCOME_MODEL_ROWS).
OUTCOME_MODEL_LOOKBACK = timedelta(weeks=8)
PLURAL = {"week": "weeks", "entity": "entities", "row": "rows"}
PROMOTIONS = ("promoted", "approved")
ALIAS_EVENTS = (*PROMOTIONS, "rolled_back", "manual_promotion")
# The figures of the training run behind a promotion (logged by flows/retrain.py, models/gates.Evidence.metrics).
CLAIM_METRICS = {"gain": "diff_value_dr_difference", "low": "diff_value_dr_low", "high": "diff_value_dr_high",
                 "value": "ope_dr_challenger_estimate", "previous_value": "ope_dr_champion_estimate"}


@dataclass(frozen=True)
class Claim:
    """What the promotion claimed (EUR per decision): the paired gain with its interval, and both values."""
    gain: float
    low: float
    high: float
    value: float | None = None
    previous_value: float | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Claim | None:
        if not all(CLAIM_METRICS[k] in metrics for k in ("gain", "low", "high")):
            return None
        return cls(*(metrics[CLAIM_METRICS[k]] for k in ("gain", "low", "high")),
                   metrics.get(CLAIM_METRICS["value"]), metrics.get(CLAIM_METRICS["previous_value"]))


@dataclass(frozen=True)
class GuardVerdict:
    action: Action
    reason: str
    rows: int
    gain: Difference | None = None
    new_value: OPEResult | None = None
    previous_value: OPEResult | None = None

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows}
        if self.gain is not None:
            out |= {"gain": self.gain.difference, "gain_low": self.gain.low, "gain_high": self.gain.high,
                    "resampled": self.gain.blocks}
        for name, value in (("new", self.new_value), ("previous", self.previous_value)):
            if value is not None:
                out |= {f"{name}_value": value.estimate, f"{name}_low": value.low, f"{name}_high": value.high,
                        f"{name}_coverage": value.coverage, f"{name}_ess": value.ess}
        return out


def guard_verdict(spec: ModelSpec, logs: pl.DataFrame, new_scores: np.ndarray, new_threshold: float | np.ndarray,
                  previous_scores: np.ndarray, previous_threshold: float | np.ndarray, claim: Claim,
                  claim_comparable: bool = True, outcome_rows: pl.DataFrame | None = None) -> GuardVerdict:
    """The rule of the module docstring on labelled post-promotion logs (``decision``, ``propensity``,
    ``label``, features, ``week``/``entity_id``) scored by the new and the previous champion.

    ``claim_comparable=False`` (rows of held segments were left out, the claim was measured with them):
    the bar is ``-guard_margin``, i.e. roll back only when the new champion is clearly worse than the previous one.
    ``outcome_rows``: labelled logs from before the promotion, for the doubly robust outcome model only, as
    the promotion's own estimate had them (models/ope.py, ``logged_rows``).
    """
    gates = spec.gates
    known = int((logs.get_column("propensity").cast(pl.Float64).fill_nan(None).fill_null(0.0) > 0).sum()) if logs.height else 0
    if known < gates.min_labelled_rows:
        return GuardVerdict("wait", f"{known} labelled decisions with a known propensity since the promotion; the guard "
                                    f"needs {gates.min_labelled_rows}", known)
    alpha = weekly_alpha(gates)
    # Always the widened interval, whatever value_interval says for promotions: a rollback rests on the upper bound,
    # the side the percentile interval misses most when conversions are rare (bench/ope_accuracy.py: 11 of 80 lead
    # comparisons). On the benchmark it removed two lead champions that were in truth a little better.
    widened = replace(gates, value_interval="widened")
    settings = estimate_settings(widened, spec.training.seed)
    logged = logged_rows(logs, spec, outcome_rows=outcome_rows)
    p_new = positive_probability(new_scores, new_threshold, spec)
    p_previous = positive_probability(previous_scores, previous_threshold, spec)
    new_value, previous_value = estimate(logged, p_new, "dr", **settings), estimate(logged, p_previous, "dr", **settings)
    gain = value_difference(logged, p_new, p_previous, "dr", **settings)
    level = 1 - 2 * alpha
    text = (f"on {len(logged.positive)} labelled decisions since the promotion the gain over the previous champion is "
            f"{gain.difference:+.2f} EUR per decision, {level:.0%} interval [{gain.low:+.2f}, {gain.high:+.2f}] (paired, "
            f"resampling whole {PLURAL.get(gain.blocks, gain.blocks)}{interval_note(widened)}); claimed at promotion {claim.gain:+.2f} [{claim.low:+.2f}, {claim.high:+.2f}]")
    bar = claim.gain - gates.guard_margin if claim_comparable else -gates.guard_margin
    against = "the claim minus the margin" if claim_comparable else (
        "minus the margin: rows of segments held in safe mode were left out, so the claim, measured with them, is "
        "not comparable and the bar is the previous champion itself")
    short = gain.high < bar
    unproven = gain.low <= gates.min_value_improvement
    if not (short and unproven):
        why = (("within the claim" if claim_comparable else "not clearly worse than the previous champion (rows of "
                "segments held in safe mode left out: the claim is not comparable)") if not short else
               f"short of the claim but still clearly better than the previous champion (lower bound above "
               f"{gates.min_value_improvement:g})")
        return GuardVerdict("held", f"held up: {text}; {why}", len(logged.positive), gain, new_value, previous_value)
    problems = coverage_problems(gates, previous_value)
    if problems:
        return GuardVerdict("uncovered", f"fell short, but the logs cannot vouch for the previous champion ({'; '.join(problems)}): "
                                    f"no automatic rollback, a person may run `loop rollback`. {text}",
                            len(logged.positive), gain, new_value, previous_value)
    return GuardVerdict("rollback", f"fell short: {text}; the upper bound {gain.high:+.2f} is below {against} "
                                    f"({bar:+.2f}) and the lower bound {gain.low:+.2f} no longer clears "
                                    f"{gates.min_value_improvement:g}", len(logged.positive), gain, new_value, previous_value)


@dataclass(frozen=True)
class GuardPeriod:
    version: str
    previous: str
    promoted_at: datetime
    start: datetime                # rows decided in [start, end) by `version` are the guard's logs
    end: datetime
    over_at: datetime              # from then on the guard no longer watches this promotion


def guard_period(spec: ModelSpec, audit: pl.DataFrame, champion_version: str, previous: str | None,
                 as_of: datetime) -> GuardPeriod | str:
    """The promotion the guard watches now, or why there is none (a plain sentence).

    ``audit``: the model's rows of the audit table. The latest alias event must be the promotion (or
    approval) of the current champion: a rollback, or a champion moved by hand, is not guarded.
    """
    weeks = spec.gates.guard_weeks
    if weeks <= 0:
        return "the spec sets no guard weeks"
    events = audit.filter(pl.col("event").is_in(list(ALIAS_EVENTS))).sort("at", "recorded_at", nulls_last=False)
    if events.is_empty():
        return "no promotion recorded"
    last = events.row(-1, named=True)
    if last["event"] not in PROMOTIONS or str(last["version"]) != str(champion_version):
        return f"the champion's latest change is '{last['event']}' of version {last['version']}, not a promotion to guard"
    if not previous:
        return f"version {champion_version} replaced no earlier champion: nothing to go back to"
    promoted_at = last["at"]
    window = guard_window(spec, promoted_at, as_of)
    if window is None:
        return f"the guard weeks after the promotion at {promoted_at.isoformat()} are over"
    end, over_at = window
    return GuardPeriod(str(champion_version), str(previous), promoted_at, promoted_at, end, over_at)


def guard_window(spec: ModelSpec, promoted_at: datetime, as_of: datetime) -> tuple[datetime, datetime] | None:
    """(end of the guard's logs as of ``as_of``, when the guard stops watching) for a promotion at ``promoted_at``;
    None once the guard weeks' labels can be mature. The logs are the rows decided in [promoted_at, end)."""
    end = promoted_at + timedelta(weeks=spec.gates.guard_weeks)
    over_at = end + timedelta(days=spec.outcomes.maturity_days)
    return None if as_of >= over_at else (min(end, as_of), over_at)


def run_guard(store, registry, spec: ModelSpec, as_of: datetime) -> dict[str, Any]:
    """Check the current champion of ``spec`` against its promotion claim; roll back when the rule says so.

    Returns what happened for the monitor's artifact and MLflow run: ``status`` (no_champion,
    not_guarded, no_claim, wait, held, uncovered, rolled_back), ``reason`` and the figures.
    """
    from features.clock import iso_week
    from features.safe_mode import active
    from features.windows import labelled_between
    from models.policy import Policy
    from models.promotion import AuditTrail, rollback
    from models.registry import CHAMPION

    model = spec.name
    champion = registry.version_by_alias(model, CHAMPION)
    if champion is None:
        return {"status": "no_champion", "reason": "no champion yet"}
    audit = store.scan_audit().filter(pl.col("model") == model).collect()
    period = guard_period(spec, audit, str(champion.version), champion.tags.get("previous_champion"), as_of)
    if isinstance(period, str):
        return {"status": "not_guarded", "reason": period, "version": str(champion.version)}
    out: dict[str, Any] = {"version": period.version, "previous": period.previous,
                           "promoted_at": period.promoted_at.isoformat(), "from": period.start.isoformat(),
                           "to": period.end.isoformat(), "watched_until": period.over_at.isoformat()}
    claim = Claim.from_metrics(registry.client.get_run(champion.run_id).data.metrics)
    if claim is None:
        return {**out, "status": "no_claim", "reason": "the promotion recorded no off-policy gain to check against"}
    out["claim"] = {"gain": claim.gain, "low": claim.low, "high": claim.high, "value": claim.value,
                    "previous_value": claim.previous_value}
    logs = labelled_between(store, spec, period.start, period.end, as_of).filter(
        pl.col("model_version") == period.version)
    # In a segment held in safe mode neither champion decides (the safe decision, or the floor's few): its rows
    # say nothing about which champion to serve, and their safe decisions would only lower the coverage.
    held = SafeMode.from_frame(active(store, model))
    before = logs.height
    logs = logs.filter(~held.matches(logs)) if held.segments else logs
    out["held_segments_left_out"] = held.keys if logs.height < before else []
    if logs.height < spec.gates.min_labelled_rows:
        verdict = GuardVerdict("wait", f"{logs.height} labelled decisions by version {period.version} since the promotion "
                                       f"outside segments held in safe mode; the guard needs {spec.gates.min_labelled_rows}",
                               logs.height)
    else:
        from threadpoolctl import threadpool_limits

        new = Policy(spec, registry.load(model, period.version))
        previous = Policy(spec, registry.load(model, period.previous))
        # One OpenMP thread for the outcome model's fits: next to other work on 2 cores, spinning threads made
        # them up to 8x slower (27 s instead of 3.5 s for 5,000 rows), and the guard runs in every monitor run.
        with threadpool_limits(1):
            # Each row at the threshold each policy would have used for it (its segment's, or the rule's).
            # The rows before the promotion teach the outcome model, as they did for the estimate the claim came from.
            older = labelled_between(store, spec, period.start - OUTCOME_MODEL_LOOKBACK, period.start, as_of)
            verdict = guard_verdict(spec, logs, new.scores(logs), new.thresholds(logs), previous.scores(logs),
                                    previous.thresholds(logs), claim, claim_comparable=logs.height == before,
                                    outcome_rows=older)
    out |= {"action": verdict.action, "reason": verdict.reason, "figures": verdict.figures()}
    if verdict.action != "rollback":
        return {**out, "status": verdict.action}
    # Under the write lock: the champion must still be the one judged (a retraining may have moved it).
    with store.writer():
        current = registry.version_by_alias(model, CHAMPION)
        if current is None or str(current.version) != period.version:
            return {**out, "status": "not_guarded", "reason": f"the champion moved while the guard ran; {verdict.reason}"}
        restored = rollback(model, ACTOR, f"guard after promotion: {verdict.reason}", registry,
                            AuditTrail(store, registry, as_of), week=iso_week(as_of))
    return {**out, "status": "rolled_back", "restored": restored}
