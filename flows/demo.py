"""The demo: simulated weeks of the self-optimising loop, scored against a frozen champion and an oracle.

Each week the simulator (the company's CRM and mailbox) asks the current champion for its
decisions, drops that week's actions and the outcomes observed so far into the inbox, and the
real ``self-optimise`` Prefect flow runs. Ground truth is used only for the scoreboard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from features.clock import iso_week
from features.safe_mode import active
from flows.runtime import Runtime
from flows.self_optimise import self_optimise_flow
from models.policy import Policy
from models.registry import CHAMPION, LoadedModel
from models.safe_decisions import SafeMode
from simulator import scoreboard
from simulator.world import MODELS, World, WorldConfig

# Monday 03:00 Europe/Berlin: when the weekly cycle runs, right after the simulated week ends.
CYCLE_DELAY = timedelta(hours=3)


@dataclass(frozen=True)
class DemoConfig:
    weeks: int = 16
    seed: int = 7
    leads_per_week: int = 2000
    emails_per_week: int = 5000
    frozen_week: int = 4
    lead_drift_week: int = WorldConfig.lead_source_drift_week
    reply_drift_week: int = WorldConfig.reply_template_drift_week

    @property
    def drift_weeks(self) -> dict[str, int]:
        return {"lead_scoring": self.lead_drift_week, "reply_acceptance": self.reply_drift_week}


def _champion(runtime: Runtime, model: str) -> LoadedModel | None:
    if runtime.registry.version_by_alias(model, CHAMPION) is None:
        return None
    return runtime.registry.load(model, CHAMPION)


def _decide(world: World, policy: Policy, population: pl.DataFrame, key: bytes) -> pl.DataFrame:
    entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *policy.spec.feature_names)
    return policy.decide(entities, key)


def _play_the_approver(runtime: Runtime, result: dict, as_of) -> None:
    """The demo's stand-in for a person: versions waiting for approval are approved through the same path as `loop approve`."""
    from models.promotion import AuditTrail, approve

    for model, status in result["models"].items():
        if status["retrain"].get("event") == "awaiting_approval":
            approve(model, status["retrain"]["version"], "demo-operator", "demo: reviewed the flip share and approved",
                    runtime.registry, AuditTrail(runtime.store, runtime.registry, as_of), week=iso_week(as_of))
            status["retrain"]["event"] = "promoted"


def _week_note(status: dict) -> str:
    """The retraining's decision, and what the guard and safe mode did, for the demo's line per week."""
    note = status["retrain"].get("event", "-")
    drift = status["drift"]
    guard = drift.get("guard") or {}
    if guard.get("status") == "rolled_back":
        note += f" (guard rolled back to v{guard['restored']})"
    elif guard.get("status") == "uncovered":
        note += f" (guard: v{guard['version']} fell short, logs cannot vouch for the previous one)"
    held = (drift.get("patterns") or {}).get("held")
    return note + (f" (safe mode: {', '.join(held)})" if held else "")   # not [...]: rich reads that as markup


def run_demo(config: DemoConfig, on_week: Callable[[int, dict], None] | None = None) -> pl.DataFrame:
    runtime = Runtime.from_env()
    key = runtime.settings.pseudonym_key
    world = World(WorldConfig(seed=config.seed, leads_per_week=config.leads_per_week,
                              emails_per_week=config.emails_per_week, lead_source_drift_week=config.lead_drift_week,
                              reply_template_drift_week=config.reply_drift_week), runtime.specs)
    inbox = runtime.settings.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    pending = []                    # outcome events not yet observed by the company
    frozen: dict[str, Policy] = {}
    rows: list[dict] = []
    for week in range(config.weeks):
        as_of = world.week_start(week + 1) + CYCLE_DELAY
        week_rows: dict[str, list[dict]] = {}
        for model in MODELS:
            spec = runtime.spec(model)
            population = world.population(model, week)
            loop_policy = Policy(spec, _champion(runtime, model), SafeMode.from_frame(active(runtime.store, model)))
            if week == config.frozen_week:
                frozen[model] = loop_policy.frozen()
            frozen_policy = frozen.get(model, loop_policy)

            actions = _decide(world, loop_policy, population, key)
            actions.write_parquet(inbox / f"actions-{model}-week{week:02d}.parquet")
            pending.append(world.outcome_events(model, population, actions["decision"], actions["action_id"],
                                                actions["decided_at"]))
            # The scoreboard's AUC and calibration error compare P(success | lead, decision taken) with the truth.
            scored = {"loop": (loop_policy, actions["decision"],
                               loop_policy.outcome_probabilities(population, actions["decision"]))}
            if frozen_policy is loop_policy:
                scored["frozen"] = scored["loop"]
            else:
                frozen_decisions = frozen_policy.decisions(frozen_policy.scores(population), population)
                scored["frozen"] = (frozen_policy, frozen_decisions,
                                    frozen_policy.outcome_probabilities(population, frozen_decisions))
            oracle = world.oracle_decisions(model, population)
            truth = world.true_probability(model, population, pl.Series([spec.positive_decision] * population.height))
            week_rows[model] = []
            for name, (policy, decisions, scores) in scored.items():
                outcome = world.realise(model, population, decisions)
                week_rows[model].append(scoreboard.policy_row(
                    week, model, name, outcome["value"], outcome["success"], scores,
                    (decisions == spec.positive_decision).to_numpy(), policy.version, policy.threshold))
            oracle_outcome = world.realise(model, population, oracle)
            week_rows[model].append(scoreboard.policy_row(
                week, model, "oracle", oracle_outcome["value"], oracle_outcome["success"], truth.to_numpy(),
                (oracle == spec.positive_decision).to_numpy(), "truth", float("nan")))

        events = pl.concat(pending)
        observed = events.filter(pl.col("observed_at") <= as_of)
        pending = [events.filter(pl.col("observed_at") > as_of)]
        if observed.height:
            observed.write_parquet(inbox / f"outcomes-week{week:02d}.parquet")

        result = self_optimise_flow(as_of=as_of, inbox=str(inbox))
        _play_the_approver(runtime, result, as_of)
        for model, model_rows in week_rows.items():
            status = result["models"][model]
            for row in model_rows:
                if row["policy"] == "loop":
                    row["promoted"] = status["retrain"].get("event") == "promoted"
                    row["drift_alarm"] = bool(status["drift"].get("drift_detected"))
                    row |= scoreboard.evidence_columns(status["retrain"])
            rows += model_rows
        if on_week:
            on_week(week, {"week": iso_week(as_of), **{m: _week_note(result["models"][m]) for m in MODELS}})
    return scoreboard.weekly_table(rows)


def demo_report(table: pl.DataFrame, config: DemoConfig, settings, console) -> bool:
    """Print the week-by-week table, write CSV and chart, and check the loop earned its keep."""
    out = settings.demo_dir
    out.mkdir(parents=True, exist_ok=True)
    table.write_csv(out / "weekly.csv")
    drift_weeks = config.drift_weeks
    scoreboard.chart(table, drift_weeks, out / "weekly.png")
    evidence = scoreboard.promotion_evidence(table)
    evidence.write_csv(out / "promotions.csv")
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(scoreboard.wide(table))  # plain print: rich would wrap the table at 80 columns in a log
        print("\nEach retraining decision and the off-policy evidence behind it (challenger's doubly robust value per "
              "decision in EUR with its interval, coverage of its decisions by the logs, effective sample size, "
              "paired difference to the champion with its interval):")
        print(evidence)
    ok = True
    for model, first in drift_weeks.items():
        if first >= config.weeks:
            continue
        sums = scoreboard.comparison_after(table, model, first)
        loss = 1 - sums["frozen"] / sums["oracle"] if sums["oracle"] else float("nan")
        gain = sums["loop"] - sums["frozen"]
        verdict = "OK" if gain > 0 else "FAILED"
        ok &= gain > 0
        console.print(f"{model}, weeks {first}-{config.weeks - 1} (after the drift): loop {sums['loop']:,.0f} EUR, "
                      f"frozen {sums['frozen']:,.0f} EUR, oracle {sums['oracle']:,.0f} EUR; frozen loses {loss:.0%} of the "
                      f"oracle's value; loop - frozen = {gain:,.0f} EUR [{verdict}]")
    console.print(f"table: {out / 'weekly.csv'}   chart: {out / 'weekly.png'}   UIs: make ui")
    return ok
