"""Markdown for Prefect artifacts and the CLI: what a run did, in words a person reads."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(row.get(h)) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def retrain_summary(model: str, week: str, outcome: dict[str, Any]) -> str:
    lines = [f"# Retraining `{model}`, {week}", ""]
    if outcome.get("status") != "trained":
        lines.append(f"**No new model:** {outcome.get('reason', outcome.get('status'))}")
        return "\n".join(lines)
    lines += [
        f"**Decision: {outcome['event']}** for version {outcome['version']} "
        f"(threshold {outcome['threshold']:.3f}, {outcome['threshold_reason']}).", "",
        "Reasons: " + "; ".join(outcome["reasons"]), "",
        f"Training set: {outcome['rows']} mature labelled rows up to {outcome['as_of']} "
        f"(fit {outcome['split']['fit_rows']}, calibration {outcome['split']['calibration_rows']}, "
        f"test {outcome['split']['test_rows']}); spec hash `{outcome['spec_hash']}`; MLflow run `{outcome['run_id']}`.", "",
    ]
    if outcome.get("trained_on"):
        lines += [(f"Training set, fit and comparison with the champion: {outcome['train_seconds']:.1f} s on "
                   f"{outcome['trained_on']}."), ""]
    lines += [
        "## Challenger vs champion on the same most recent labelled rows", "",
        markdown_table(outcome["comparison"]),
    ]
    if outcome.get("policy_values"):
        lines += ["", "## Off-policy value per decision (EUR) on the test weeks", "",
                  "Doubly robust (cross-fitted outcome model) and self-normalised IPS; coverage = share of the "
                  "policy's decisions the logs could have taken; ESS = effective sample size of the weights.", "",
                  markdown_table(outcome["policy_values"])]
    if outcome.get("differences"):
        alpha = outcome.get("one_sided_alpha")
        level = f"{1 - 2 * alpha:.0%} " if alpha else ""
        lines += ["", f"## Challenger − champion, paired {level}intervals", "",
                  f"Both models on the same rows; each draw resamples the same whole weeks (or entities) for both. "
                  f"Weekly one-sided level {_fmt(alpha)} (spec alpha over its horizon of weekly tests).", "",
                  markdown_table(outcome["differences"])]
    if outcome.get("flip_share") is not None:
        lines += ["", f"Share of last week's decisions that would flip: {outcome['flip_share']:.1%}"]
    if outcome["event"] == "awaiting_approval":
        where = (f"the approval form on flow run `{outcome['approval_run']}` in the Prefect UI, or"
                 if outcome.get("approval_run") else "")
        lines += ["", f"**Waiting for a person:** answer with {where} `loop approve {model} {outcome['version']} --by NAME` "
                      f"/ `loop reject {model} {outcome['version']} --by NAME`."]
    return "\n".join(lines)


def drift_summary(model: str, week: str, drift: dict[str, Any]) -> str:
    if drift.get("status") != "checked":
        return f"# Drift `{model}`, {week}\n\n{drift.get('reason', 'not checked')}"
    flag = "DRIFT" if drift["drift_detected"] else "no drift"
    lines = [
        f"# Drift `{model}`, {week}: **{flag}**", "",
        f"Reference: champion v{drift['champion_version']}'s training window ({drift['reference_rows']} actions); "
        f"current: last 7 days ({drift['current_rows']} actions).", "",
        f"- drifted features: {drift['drifted_share']:.0%} ({drift['drifted_columns'] or 'none'})",
        f"- score distribution: {'drifted' if drift['score_drifted'] else 'stable'} (distance {drift.get('score_distance', 0):.3f})",
        f"- outcome rate at equal label age: {_fmt(drift.get('outcome_rate_reference'))} -> "
        f"{_fmt(drift.get('outcome_rate_current'))} ({'beyond' if drift['outcome_rate_drifted'] else 'within'} tolerance); "
        f"self-caused {_fmt(drift.get('outcome_rate_self_caused'))}, outside {_fmt(drift.get('outcome_rate_outside'))}: "
        f"{drift.get('outcome_rate_note', '')}",
        f"- Evidently report logged to MLflow run `{drift['run_id']}`",
    ]
    trigger = drift.get("trigger")
    if trigger:
        kpi = drift["kpi"]
        lines += [
            "", f"## Retraining trigger: **{'FIRED' if trigger['triggered'] else 'not fired'}**", "",
            f"{trigger['reason']}.", "",
            f"KPI (positive-outcome rate at equal label age) in window {_fmt(kpi['window'])}: "
            f"{_fmt(kpi['reference'])} -> {_fmt(kpi['current'])}, of which self-caused {_fmt(kpi['self_caused'])}, "
            f"outside {_fmt(kpi['outside_change'])} ({'a drop' if kpi['dropped'] else 'no drop'}).", "",
            "### Weekly windows (0 = the latest), each against the reference", "",
            "`outside_drift` is what counts: feature or score drift, or an outcome-rate change beyond tolerance "
            "after removing the part the policy change explains (`self_caused`).", "",
            markdown_table(drift["windows"]), "",
            "### Per policy version (model version @ threshold)", "",
            markdown_table(drift["policies"]),
        ]
    return "\n".join(lines)
