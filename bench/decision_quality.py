"""Decision quality of the loop over 26 simulated weeks: how much of the achievable gain it captures.

For each seed and model the simulator's company runs for ``--weeks`` weeks under four policies that
face the same entities with the same random draws (so differences are the policies'):

  (a) loop        the full loop: exploration, decision-aware models (where the spec says so),
                  the pattern report with safe mode, the guard after each promotion (models/guard.py,
                  which may roll back), weekly retraining on mature outcomes, the spec's statistical gates;
  (b) naive       the same loop without exploration and with pooled models;
  (c) frozen      the loop's week-4 champion, frozen with its threshold, deciding every row itself (no
                  safe mode, no cold-start rule for categories it never saw: Policy.frozen);
  (d) rule        the spec's cold-start rule.

It reports, per model and policy, the share of the achievable gain captured over all weeks,
``(V - V_rule) / (V_oracle - V_rule)`` (V = realised EUR summed over the weeks; "expected" next to it:
V = expected EUR under the true probabilities, the same decisions without the luck of which entities
happened to convert, so the oracle is the ceiling on every seed), the weeks needed
after each scheduled drift until a week captures 80 % of that week's achievable gain, and the
champion's calibration error week by week. It calls the library directly (Policy, fit_model,
compare_with_champion, decide_promotion): no Prefect, no MLflow, no Delta. A promotion that the
gates send to a person is approved when its estimated value gain is not negative (``approves``); a first
model the flip limit sends there has no estimate against the rule's deterministic logs and is not approved.

    .venv/bin/python bench/decision_quality.py            # 5 seeds, both models
    .venv/bin/python bench/decision_quality.py --quick    # 1 seed
    .venv/bin/python bench/decision_quality.py --models lead_scoring --assumed-effect 0.4 --out /tmp/dq.json

``--assumed-effect`` replaces the lead spec's ``[objective] action_effect`` (the share of a conversion the
meeting brings) for the loops, not for the simulated world (whose truth is 0.65): the pooled loop takes it
as given, the decision-aware one only starts from it. It shows what each loop does when the spec's
assumption is wrong.

Figures go to stdout and to bench/results/decision_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

# One OpenMP thread per process, set before anything loads an OpenMP runtime: the runtime reads it once,
# and two processes whose thread pools each spin on both cores ran this benchmark 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl

RECOVERY_SHARE = 0.8
FROZEN_WEEK = 4
KEY = b"bench-decision-quality"
TARGETS = {"gain_share": 0.8, "weeks_to_recover": {"lead_scoring": 6, "reply_acceptance": 2}}
# Column suffix of a policy's expected EUR (the true probabilities times the objective, World.expected_value)
# next to its realised EUR: the same decisions without the luck of which leads happened to convert.
EXPECTED = "_expected"


@dataclasses.dataclass
class LoopState:
    """One learning policy's memory: its champion and everything it has logged and observed."""
    spec: object
    champion: object = None
    versions: int = 0
    actions: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)
    promotions: list = dataclasses.field(default_factory=list)
    decisions: list = dataclasses.field(default_factory=list)
    champion_as_of: object = None
    safe: object = None                  # models.safe_decisions.SafeMode: segments held at the safe decision
    held: list = dataclasses.field(default_factory=list)
    guarded: object = None               # (previous champion, its as-of, models.guard.Claim) while the guard watches
    rollbacks: list = dataclasses.field(default_factory=list)
    guard_verdicts: list = dataclasses.field(default_factory=list)


def _entities(population: pl.DataFrame, spec) -> pl.DataFrame:
    return population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)


def _hold_weak_segments(state: LoopState, actions: pl.DataFrame, events: pl.DataFrame, as_of, week: int) -> None:
    """The monitor's pattern report (models/patterns.py) on the in-memory logs; flagged segments join safe mode.

    Nobody runs `loop clear` here: a held segment stays held (with its exploration floor) to the end.
    """
    from features.windows import pattern_bounds, window_of
    from models.patterns import pattern_report, with_expected
    from models.safe_decisions import SafeMode

    spec = state.spec
    if state.champion is None or not (spec.patterns.segments and spec.patterns.safe_mode):
        return
    (ref_start, ref_end), (start, end) = pattern_bounds(spec, as_of, state.champion_as_of)
    reference = window_of(actions.lazy(), events.lazy(), spec, ref_start, ref_end, as_of)
    current = window_of(actions.lazy(), events.lazy(), spec, start, end, as_of)
    estimator = state.champion.estimator
    report = pattern_report(with_expected(reference, estimator, spec), with_expected(current, estimator, spec), spec)
    flagged = {(s.column, s.value) for s in report.flagged}
    new = flagged - state.safe.segments
    if new:
        state.safe = SafeMode(state.safe.segments | new)
        state.held.append({"week": week, "segments": sorted(f"{c}={v}" for c, v in new)})


def _guard(state: LoopState, labelled: pl.DataFrame, as_of, week: int) -> None:
    """The monitor's guard after promotion (models/guard.py, as run_guard applies it) on the in-memory logs."""
    from models.guard import OUTCOME_MODEL_LOOKBACK, guard_verdict, guard_window
    from models.policy import Policy

    if state.guarded is None:
        return
    spec, (previous, previous_as_of, claim) = state.spec, state.guarded
    promoted_at = state.champion_as_of
    window = guard_window(spec, promoted_at, as_of)
    if window is None:
        state.guarded = None
        return
    decided = pl.col("decided_at")
    logs = labelled.filter((decided >= promoted_at) & (decided < window[0])
                           & (pl.col("model_version") == state.champion.version))
    before = logs.height
    logs = logs.filter(~state.safe.matches(logs)) if state.safe.segments else logs
    if logs.height < spec.gates.min_labelled_rows:
        return
    new, old = Policy(spec, state.champion), Policy(spec, previous)
    older = labelled.filter((decided >= promoted_at - OUTCOME_MODEL_LOOKBACK) & (decided < promoted_at))
    verdict = guard_verdict(spec, logs, new.scores(logs), new.thresholds(logs), old.scores(logs), old.thresholds(logs),
                            claim, claim_comparable=logs.height == before, outcome_rows=older)
    gain = verdict.gain
    state.guard_verdicts.append({"week": week, "action": verdict.action, "claim": round(claim.gain, 2),
                                 "gain": gain and [round(gain.difference, 2), round(gain.low, 2), round(gain.high, 2)]})
    if verdict.action == "rollback":
        state.champion, state.champion_as_of, state.guarded = previous, previous_as_of, None
        state.rollbacks.append(week)


def _cycle(state: LoopState, as_of, week: int) -> None:
    """The weekly cycle of flows/cycle.py without Prefect and MLflow: pattern report and safe mode, the guard
    after a promotion, then train, compare, gate, promote."""
    from features.training_set import NotEnoughData, mature, time_split, with_labels
    from models.evaluation import compare_with_champion
    from models.guard import Claim
    from models.registry import LoadedModel
    from models.train import fit_model

    spec = state.spec
    actions = pl.concat(state.actions, how="diagonal_relaxed")
    events = pl.concat(state.events).filter(pl.col("observed_at") <= as_of)
    _hold_weak_segments(state, actions, events, as_of, week)
    labelled = mature(with_labels(actions.lazy(), events.lazy(), spec, as_of)).sort("decided_at", "action_id").collect()
    _guard(state, labelled, as_of, week)
    try:
        split = time_split(labelled, spec)
        trained = fit_model(split, spec)
    except NotEnoughData:
        return
    state.versions += 1
    challenger = LoadedModel(spec.name, str(state.versions), trained.estimator, trained.threshold.threshold, "",
                             trained.thresholds)
    recent = actions.filter(pl.col("decided_at") > as_of - timedelta(days=7))
    comparison = compare_with_champion(spec, trained, split, state.champion, recent, challenger)
    evidence = comparison.evidence
    value = evidence.challenger_value.get("dr") if evidence else None
    diff = evidence.differences.get("value_dr") if evidence else None
    state.decisions.append({"week": week, "action": comparison.decision.action,
                            "coverage": value and round(value.coverage, 3),
                            "value_diff": diff and [round(diff.difference, 2), round(diff.low, 2), round(diff.high, 2)]})
    if comparison.decision.action == "promote" or (comparison.decision.action == "await_approval" and approves(diff)):
        # As the registry does: a promotion over a champion is guarded against the gain it claimed.
        if state.champion is not None and diff is not None:
            state.guarded = (state.champion, state.champion_as_of, Claim(diff.difference, diff.low, diff.high))
        else:
            state.guarded = None
        state.champion = challenger
        state.champion_as_of = as_of
        state.promotions.append(week)


def approves(difference) -> bool:
    """The simulated person: approves what the gates send to them when the estimated value gain is not negative.

    They read the same evidence as the gates (the doubly robust difference, which may lean on few
    explored rows) and approve a challenger their logs say is at least as good; no estimate, no approval.
    """
    return difference is not None and difference.difference == difference.difference and difference.difference >= 0


def _ece(world, model: str, spec, population: pl.DataFrame, policy, decisions: pl.Series) -> float | None:
    from models.decision_aware import outcome_probability
    from models.evaluate import expected_calibration_error

    if policy.model is None:
        return None
    truth = world.true_probability(model, population, decisions).to_numpy()
    frame = _entities(population, spec).with_columns(decisions)
    predicted = outcome_probability(policy.model.estimator, frame, spec)
    # Against the true probabilities (known here) rather than noisy outcomes: the model's own error.
    return expected_calibration_error(truth, predicted)


def _values(world, model: str, population: pl.DataFrame, policy: str, decisions: pl.Series) -> dict[str, float]:
    """A policy's EUR in one week: realised (its outcomes as drawn) and expected (under the true probabilities)."""
    return {policy: float(world.realise(model, population, decisions)["value"].sum()),
            policy + EXPECTED: round(float(world.expected_value(model, population, decisions).sum()), 2)}


def with_assumed_effect(spec, action_effect: float | None):
    """The spec with its objective's ``action_effect`` replaced (specs whose objective has none stay as they are)."""
    if action_effect is None or spec.objective.kind != "expected_value":
        return spec
    return dataclasses.replace(spec, objective=dataclasses.replace(spec.objective, action_effect=action_effect))


def run_seed(seed: int, model: str, weeks: int, assumed_effect: float | None = None) -> dict:
    """All four policies for one seed and model; returns weekly values and the loop's promotion weeks.

    ``assumed_effect`` changes what the loops assume (see the module's docstring), never the world.
    """
    from features.spec import load_specs
    from models.policy import Policy
    from models.safe_decisions import SafeMode
    from simulator.world import World, WorldConfig

    specs = load_specs(ROOT / "data" / "specs")
    spec = with_assumed_effect(specs[model], assumed_effect)
    naive_spec = dataclasses.replace(spec, exploration=dataclasses.replace(spec.exploration, share=0.0, rule_share=None),
                                     training=dataclasses.replace(spec.training, decision_aware=False))
    world = World(WorldConfig(seed=seed), specs)
    loops = {"loop": LoopState(spec, safe=SafeMode()), "naive": LoopState(naive_spec, safe=SafeMode())}
    frozen = None
    rows = []
    started = time.perf_counter()
    for week in range(weeks):
        population = world.population(model, week)
        entities = _entities(population, spec)
        values: dict[str, float] = {}
        for name, state in loops.items():
            policy = Policy(state.spec, state.champion, state.safe)
            if name == "loop" and week == FROZEN_WEEK:
                frozen = Policy(spec, state.champion).frozen()
            actions = policy.decide(entities, KEY)
            values |= _values(world, model, population, name, actions["decision"])
            if name == "loop":
                ece = _ece(world, model, spec, population, policy, actions["decision"])
            state.actions.append(actions)
            state.events.append(world.outcome_events(model, population, actions["decision"], actions["action_id"],
                                                     actions["decided_at"]))
        frozen_policy = frozen or Policy(spec, loops["loop"].champion).frozen()
        values |= _values(world, model, population, "frozen", frozen_policy.decisions(frozen_policy.scores(entities), entities))
        rule = Policy(spec)
        values |= _values(world, model, population, "rule", rule.decisions(rule.scores(entities), entities))
        values |= _values(world, model, population, "oracle", world.oracle_decisions(model, population))
        rows.append({"seed": seed, "model": model, "week": week, **values, "calibration_error": ece})
        as_of = world.week_start(week + 1) + timedelta(hours=3)
        for state in loops.values():
            _cycle(state, as_of, week)
    return {"rows": rows, "promotions": {k: s.promotions for k, s in loops.items()},
            "rollbacks": {k: s.rollbacks for k, s in loops.items()},
            "guard_verdicts": {k: s.guard_verdicts for k, s in loops.items()},
            "decisions": {k: s.decisions for k, s in loops.items()},
            "held": {k: s.held for k, s in loops.items()},
            "seconds": time.perf_counter() - started}


def gain_share(frame: pl.DataFrame, policy: str, suffix: str = "") -> float:
    """(V - V_rule) / (V_oracle - V_rule) over the frame's weeks; ``suffix=EXPECTED`` on expected values."""
    v, rule, oracle = frame[policy + suffix].sum(), frame["rule" + suffix].sum(), frame["oracle" + suffix].sum()
    return float((v - rule) / (oracle - rule)) if oracle != rule else float("nan")


def weeks_to_recover(frame: pl.DataFrame, policy: str, drift_week: int) -> int | None:
    """Weeks after the drift until a week captures RECOVERY_SHARE of that week's achievable gain."""
    after = frame.filter(pl.col("week") >= drift_week).sort("week").with_columns(
        ((pl.col(policy) - pl.col("rule")) / (pl.col("oracle") - pl.col("rule"))).alias("share"))
    hit = after.filter(pl.col("share") >= RECOVERY_SHARE)
    return int(hit["week"][0] - drift_week) if hit.height else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="world seeds (default 1..5)")
    parser.add_argument("--quick", action="store_true", help="one seed only (the first)")
    parser.add_argument("--weeks", type=int, default=26, help="simulated weeks (default 26)")
    parser.add_argument("--models", nargs="+", default=["lead_scoring", "reply_acceptance"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--assumed-effect", type=float, default=None, metavar="SHARE",
                        help="the loops assume a meeting brings this share of a lead's conversion chance "
                             "(default: the lead spec's action_effect; the simulated truth stays 0.65)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decision_quality.json")
    args = parser.parse_args(argv)
    if args.assumed_effect is not None and not 0.0 <= args.assumed_effect < 1.0:
        parser.error(f"--assumed-effect must be in [0, 1), not {args.assumed_effect}")
    seeds = args.seeds[:1] if args.quick else args.seeds
    from simulator.world import WorldConfig

    drift_weeks = {"lead_scoring": WorldConfig.lead_source_drift_week, "reply_acceptance": WorldConfig.reply_template_drift_week}
    started = time.perf_counter()
    jobs = [(seed, model) for model in args.models for seed in seeds]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {job: pool.submit(run_seed, *job, args.weeks, args.assumed_effect) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    table = pl.DataFrame([row for r in results.values() for row in r["rows"]])
    policies = ("loop", "naive", "frozen", "rule")
    report: dict = {"weeks": args.weeks, "seeds": seeds, "recovery_share": RECOVERY_SHARE, "frozen_week": FROZEN_WEEK,
                    "assumed_effect": args.assumed_effect, "targets": TARGETS, "models": {}}
    for model in args.models:
        per_model = table.filter(pl.col("model") == model)
        drift = drift_weeks[model]
        entry: dict = {"drift_week": drift, "gain_share": {}, "gain_share_by_seed": {}, "expected_gain_share": {},
                       "expected_gain_share_by_seed": {}, "weeks_to_recover": {},
                       "weeks_to_recover_by_seed": {}, "calibration_error_by_week": {}, "promotion_weeks": {}}
        for policy in policies:
            for key, suffix in (("gain_share", ""), ("expected_gain_share", EXPECTED)):
                entry[key][policy] = round(gain_share(per_model, policy, suffix), 4)
                entry[f"{key}_by_seed"][policy] = {
                    str(s): round(gain_share(per_model.filter(pl.col("seed") == s), policy, suffix), 4) for s in seeds}
            recover = {str(s): weeks_to_recover(per_model.filter(pl.col("seed") == s), policy, drift) for s in seeds}
            entry["weeks_to_recover_by_seed"][policy] = recover
            known = [v for v in recover.values() if v is not None]
            entry["weeks_to_recover"][policy] = max(known) if len(known) == len(recover) else None
        ece = per_model.group_by("week").agg(pl.col("calibration_error").mean()).sort("week")
        entry["calibration_error_by_week"] = {str(w): (round(e, 4) if e is not None else None)
                                              for w, e in zip(ece["week"], ece["calibration_error"], strict=True)}
        entry["promotion_weeks"] = {str(s): results[(s, model)]["promotions"] for s in seeds}
        entry["rollback_weeks"] = {str(s): results[(s, model)]["rollbacks"] for s in seeds}
        entry["guard_verdicts"] = {str(s): results[(s, model)]["guard_verdicts"] for s in seeds}
        entry["gate_decisions"] = {str(s): results[(s, model)]["decisions"] for s in seeds}
        entry["safe_mode_entered"] = {str(s): results[(s, model)]["held"] for s in seeds}
        for key, flag in (("gain_share", "loop_above_naive_and_frozen_on_every_seed"),
                          ("expected_gain_share", "loop_above_naive_and_frozen_on_every_seed_expected")):
            by_seed = entry[f"{key}_by_seed"]
            entry[flag] = all(by_seed["loop"][s] > by_seed[p][s] for s in by_seed["loop"] for p in ("naive", "frozen"))
        report["models"][model] = entry
    report["weekly"] = table.to_dicts()    # realised and expected EUR per seed, model, week and policy: behind every figure
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine_cpus"] = os.cpu_count()

    assumed = "" if args.assumed_effect is None else f", the loops assuming a meeting brings {args.assumed_effect} of a conversion"
    print(f"decision quality over {args.weeks} weeks, seeds {seeds}{assumed} ({report['seconds']} s)\n")
    print(f"{'model':<18}{'policy':<8}{'gain share':>11}   {'by seed':<44}{'weeks to recover (worst seed)':>30}"
          f"{'expected':>10}   by seed")
    for model, entry in report["models"].items():
        for policy in policies:
            seeds_text = " ".join(f"{v:.2f}" for v in entry["gain_share_by_seed"][policy].values())
            expected_text = " ".join(f"{v:.2f}" for v in entry["expected_gain_share_by_seed"][policy].values())
            recover = entry["weeks_to_recover"][policy]
            print(f"{model:<18}{policy:<8}{entry['gain_share'][policy]:>11.3f}   {seeds_text:<44}"
                  f"{('not within ' + str(args.weeks - entry['drift_week'])) if recover is None else recover:>30}"
                  f"{entry['expected_gain_share'][policy]:>10.3f}   {expected_text}")
        ece = [v for v in entry["calibration_error_by_week"].values() if v is not None]
        print(f"{model:<18}loop calibration error by week: " + " ".join(f"{v:.3f}" for v in ece))
        for policy in ("loop", "naive"):
            promoted = sum(len(weeks[policy]) for weeks in entry["promotion_weeks"].values())
            rolled = sum(len(weeks[policy]) for weeks in entry["rollback_weeks"].values())
            print(f"{model:<18}{policy} promotions {promoted}, rolled back by the guard {rolled}")
        print(f"{model:<18}loop above naive and frozen on every seed: {entry['loop_above_naive_and_frozen_on_every_seed']}"
              f" (expected values: {entry['loop_above_naive_and_frozen_on_every_seed_expected']})\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
