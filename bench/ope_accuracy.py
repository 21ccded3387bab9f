"""How close the promotion gate's doubly robust value difference comes to the truth, on the simulator.

The simulator knows every lead's true conversion chance with and without a meeting, so the true value
difference between a challenger's and the champion's policy on the gate's test rows is known. This runs the
benchmark's loop (bench/decision_quality.py) for one seed and, at every gate comparison, prints the truth
next to the doubly robust estimate as the gate makes it (its outcome model also fit on up to
OUTCOME_MODEL_ROWS older labelled rows) and as it was made on the test slice alone.

    .venv/bin/python bench/ope_accuracy.py                 # leads, seeds 1-5, 20 weeks (about 2 min)
    .venv/bin/python bench/ope_accuracy.py --quiet --value-interval widened
    .venv/bin/python bench/ope_accuracy.py --seeds 2 --model reply_acceptance --quiet

Figures go to stdout and to bench/results/ope_accuracy_<model>_<value interval>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--quiet", action="store_true", help="only the summary, not every comparison")
    parser.add_argument("--weeks", type=int, default=20)
    parser.add_argument("--model", default="lead_scoring", choices=["lead_scoring", "reply_acceptance"])
    parser.add_argument("--value-interval", choices=["widened", "bootstrap"],
                        help="the gates' [gates] value_interval (default: the spec's)")
    parser.add_argument("--out", type=Path,
                        help="JSON figures (default bench/results/ope_accuracy_<model>_<value interval>.json)")
    args = parser.parse_args(argv)

    import polars as pl

    import bench.decision_quality as dq
    from features.spec import load_specs
    from models import evaluation
    from models.exploration import positive_probability
    from models.ope import OUTCOME_MODEL_ROWS
    from models.policy import Policy
    from models.safe_decisions import SafeMode
    from simulator.world import World, WorldConfig

    specs = load_specs(ROOT / "data" / "specs")
    spec = specs[args.model]
    if args.value_interval:
        spec = dataclasses.replace(spec, gates=dataclasses.replace(spec.gates, value_interval=args.value_interval))
    objective = spec.objective
    gate = evaluation.compare_with_champion
    comparisons: list[dict] = []

    def run_seed(seed: int) -> None:
        world = World(WorldConfig(seed=seed), specs)

        def true_value(p_positive: np.ndarray, rows: pl.DataFrame) -> float:
            """Expected EUR per decision of a policy taking the positive decision with these probabilities."""
            p_pos, p_neg = world._p_both(args.model, rows)
            if args.model == "lead_scoring":
                positive = objective.value_per_conversion * p_pos - objective.cost_per_action
                return float(np.mean(p_positive * positive + (1 - p_positive) * objective.value_per_conversion * p_neg))
            return float(np.mean(p_positive * (objective.value_per_action * p_pos
                                               - objective.cost_per_failure * (1 - p_pos))))

        def compare_and_check(spec_, trained, split, champion, recent, challenger):
            comparison = gate(spec_, trained, split, champion, recent, challenger)
            if champion is None:
                return comparison
            test = split.test
            new, old = Policy(spec_, challenger), Policy(spec_, champion)
            p_new = positive_probability(new.scores(test), new.thresholds(test), spec_)
            p_old = positive_probability(old.scores(test), old.thresholds(test), spec_)
            alone = evaluation.gather_evidence(spec_, test, new.scores(test), new.thresholds(test), old.scores(test),
                                               old.thresholds(test), compare_metrics=False).differences["value_dr"]
            comparisons.append({"seed": seed, "rows": test.height, "explored": int((test["propensity"] < 0.5).sum()),
                                "truth": true_value(p_new, test) - true_value(p_old, test),
                                "gate": comparison.evidence.differences["value_dr"], "alone": alone,
                                "action": comparison.decision.action})
            return comparison

        evaluation.compare_with_champion = compare_and_check
        state = dq.LoopState(spec, safe=SafeMode())
        for week in range(args.weeks):
            population = world.population(args.model, week)
            actions = Policy(spec, state.champion, state.safe).decide(dq._entities(population, spec), dq.KEY)
            state.actions.append(actions)
            state.events.append(world.outcome_events(args.model, population, actions["decision"], actions["action_id"],
                                                     actions["decided_at"]))
            before = len(comparisons)
            dq._cycle(state, world.week_start(week + 1) + timedelta(hours=3), week)
            if len(comparisons) > before and not args.quiet:
                c = comparisons[-1]
                print(f"seed {seed} week {week:2d}  {c['rows']:5d} test rows ({c['explored']:3d} explored)  "
                      f"truth {c['truth']:+8.2f}  gate {c['gate'].difference:+8.2f} [{c['gate'].low:+8.2f}, "
                      f"{c['gate'].high:+8.2f}]  test slice alone {c['alone'].difference:+8.2f} "
                      f"[{c['alone'].low:+8.2f}, {c['alone'].high:+8.2f}]  {c['action']}", flush=True)
        evaluation.compare_with_champion = gate

    for seed in args.seeds:
        run_seed(seed)
    if not comparisons:
        print("no challenger was compared with a champion")
        return 1
    print(f"\n{args.model}, {len(comparisons)} comparisons over seeds {args.seeds}, EUR per decision "
          f"(mean absolute error against the truth, correlation with it, share of intervals holding it); gate: the "
          f"outcome model also fit on up to {OUTCOME_MODEL_ROWS:,} older rows")
    groups = [(f"seed {seed}", [c for c in comparisons if c["seed"] == seed]) for seed in args.seeds]
    figures: dict = {"model": args.model, "seeds": args.seeds, "weeks": args.weeks,
                     "value_interval": spec.gates.value_interval, "comparisons": len(comparisons)}
    for label, group in [*groups, ("all", comparisons)]:
        if not group:
            continue
        truth = np.array([c["truth"] for c in group])
        text = []
        for key in ("gate", "alone"):
            estimate = np.array([c[key].difference for c in group])
            held = float(np.mean([c[key].low <= t <= c[key].high for c, t in zip(group, truth, strict=True)]))
            correlation = float(np.corrcoef(truth, estimate)[0, 1]) if len(group) > 1 else float("nan")
            error = float(np.mean(np.abs(estimate - truth)))
            text.append(f"{error:6.2f} {correlation:+.2f} {held:4.0%}")
            if label == "all":
                figures |= {f"{key}_mean_abs_error": round(error, 3), f"{key}_correlation": round(correlation, 3),
                            f"{key}_intervals_holding_truth": round(held, 3)}
        print(f"  {label:8s} truth > 0 in {int((truth > 0).sum()):2d}/{len(group):2d}   "
              f"gate: {text[0]}   test slice alone: {text[1]}")
    truth = np.array([c["truth"] for c in comparisons])
    low, high = (np.array([getattr(c["gate"], side) for c in comparisons]) for side in ("low", "high"))
    promoted, worse = np.array([c["action"] == "promote" for c in comparisons]), high < 0
    figures |= {"truth_below_lower_bound": int((truth < low).sum()), "truth_above_upper_bound": int((truth > high).sum()),
                "promoted": int(promoted.sum()), "promoted_no_better": int((promoted & (truth <= 0)).sum()),
                "no_better": int((truth <= 0).sum()), "judged_worse": int(worse.sum()),
                "judged_worse_not_worse": int((worse & (truth >= 0)).sum())}
    print(f"\ngate intervals: truth below the lower bound (the side a promotion relies on) in "
          f"{figures['truth_below_lower_bound']}, above the upper bound (the side a 'worse' verdict and the guard's "
          f"rollback rely on) in {figures['truth_above_upper_bound']} of {len(comparisons)} "
          f"(nominal: {len(comparisons) * 0.025:.0f} each)")
    print(f"promoted {figures['promoted']} challengers, {figures['promoted_no_better']} of them no better "
          f"(of {figures['no_better']} no better); judged worse {figures['judged_worse']}, "
          f"{figures['judged_worse_not_worse']} of them not worse")
    out = args.out or ROOT / "bench" / "results" / f"ope_accuracy_{args.model}_{spec.gates.value_interval}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
