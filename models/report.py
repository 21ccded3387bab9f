"""Markdown for Prefect artifacts and the CLI: what a run did, in words a person reads."""

from __future__ import annotations

from typing import Any

from features.kpis import KPIS, kpi_labels
from features.spec import ModelSpec


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(row.get(h)) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def retrain_summary(model: str, week: str, outcome: dict[str, Any]) -> str:
    lines = [f"# Retraining `{model}`, {week}", ""]
    if outcome.get("status") not in ("trained", "recalibrated"):
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
    if outcome.get("lineage_tags", {}).get("recalibrated_from"):
        tags = outcome["lineage_tags"]
        note = (f"**Recalibration** of version {tags['recalibrated_from']}: a new calibrator and thresholds on "
                f"top of the pipeline of version {tags.get('base_version')} (trained on data up to "
                f"{tags.get('base_as_of')}). {outcome.get('recalibration_reason', '')}")
        lines[2:2] = [note, ""]
    if outcome.get("segment_thresholds"):
        lines += ["", "## Thresholds per segment", "",
                  ("Each segment with enough calibration rows is recalibrated (shrunk towards the global calibration) "
                   "and gets its own threshold; the default applies to the others."), "",
                  markdown_table(outcome["segment_thresholds"])]
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
        f"- Evidently report logged to MLflow run `{drift['run_id']}`"
        + (f": {_links(('MLflow run', drift.get('mlflow_url')), ('Evidently report', drift.get('report_url')))}"
           if drift.get("mlflow_url") else ""),
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


def patterns_summary(model: str, week: str, patterns: dict[str, Any]) -> str:
    """The weekly pattern report: per segment rate now vs the champion's training window, flags, safe mode."""
    if patterns.get("status") != "checked":
        return f"# Patterns `{model}`, {week}\n\n{patterns.get('reason', 'not checked')}"
    measured = "rows that took the positive decision" if patterns["rate_of"] == "positive_decision" else "all labelled rows"
    flagged = patterns["flagged"]
    lines = [
        f"# Patterns `{model}`, {week}: **{len(flagged)} segment(s) flagged**", "",
        (f"Positive-outcome rate at equal label age over {measured}, now ({patterns['window'][0][:10]} to "
         f"{patterns['window'][1][:10]}) against champion v{patterns['champion_version']}'s training window "
         f"({patterns['reference'][0][:10]} to {patterns['reference'][1][:10]}). Intervals: Wilson (rate) and Newcombe "
         f"(change), {patterns['level']:.1%} two-sided: each of the {patterns['tests']} tests is one-sided at "
         f"{patterns['one_sided_alpha']:.4f} (Bonferroni over the report's tests and its horizon of weekly reports). "
         f"`reference` = all segments where a segment had too few rows of its own (a new one)."), "",
        markdown_table(patterns["segments"]),
    ]
    if patterns["entered"]:
        lines += ["", (f"**Now in safe mode:** {', '.join(patterns['entered'])}: these rows take the safe decision "
                       f"until a person runs `loop clear {model} COLUMN=VALUE --by NAME --reason ...`.")]
    elif flagged and not patterns["safe_mode"]:
        lines += ["", "The spec's safe mode is off: flagged segments are reported only."]
    if patterns["held"]:
        lines += ["", f"Held in safe mode: {', '.join(patterns['held'])}."]
    if patterns["recovered"]:
        lines += ["", f"No longer flagged while held: {', '.join(patterns['recovered'])}: a person may clear them."]
    return "\n".join(lines)


def guard_summary(model: str, week: str, guard: dict[str, Any]) -> str:
    """The guard after promotion: what it compared, its verdict and whether it rolled back."""
    status = guard.get("status")
    headline = {"rolled_back": f"**ROLLED BACK** to version {guard.get('restored')}", "held": "the promotion held up",
                "uncovered": "fell short, logs cannot vouch for the previous champion", "wait": "waiting for labels",
                "no_claim": "no claim to check"}.get(status, "not guarding")
    lines = [f"# Guard after promotion `{model}`, {week}: {headline}", "", guard.get("reason", "")]
    if "version" in guard and "previous" in guard:
        lines += ["", (f"Champion v{guard['version']} (promoted {guard['promoted_at'][:16]}) against the previous "
                       f"champion v{guard['previous']}, on its labelled decisions from {guard['from'][:16]} to "
                       f"{guard['to'][:16]}; watched until {guard['watched_until'][:10]}"
                       + (f"; rows of segments held in safe mode left out ({', '.join(guard['held_segments_left_out'])})"
                          if guard.get("held_segments_left_out") else "") + ".")]
    claim, figures = guard.get("claim"), guard.get("figures") or {}
    if claim and "gain" in figures:
        rows = [{"estimate": "gain (new - previous), at promotion", "eur_per_decision": claim["gain"],
                 "interval": f"[{claim['low']:+.2f}, {claim['high']:+.2f}]"},
                {"estimate": "gain (new - previous), since the promotion", "eur_per_decision": figures["gain"],
                 "interval": f"[{figures['gain_low']:+.2f}, {figures['gain_high']:+.2f}]"},
                {"estimate": "value of the new champion's policy", "eur_per_decision": figures["new_value"],
                 "interval": f"[{figures['new_low']:+.2f}, {figures['new_high']:+.2f}]"},
                {"estimate": "value of the previous champion's policy", "eur_per_decision": figures["previous_value"],
                 "interval": f"[{figures['previous_low']:+.2f}, {figures['previous_high']:+.2f}]"}]
        lines += ["", markdown_table(rows), "",
                  (f"Doubly robust on {figures['rows']} rows, resampling whole {figures['resampled']} blocks; coverage of the "
                   f"previous champion's decisions {figures['previous_coverage']:.1%}, ESS {figures['previous_ess']:.0f}.")]
    return "\n".join(lines)


def _links(*pairs: tuple[str, str | None]) -> str:
    return " · ".join(f"[{text}]({url})" for text, url in pairs if url)


def kpi_rows(spec: ModelSpec, weeks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The weekly KPIs with the model's own words as headers; figures not final yet show as '-'."""
    labels = kpi_labels(spec)
    shown = [k for k in KPIS if k != "escalation_rate" or spec.kpis.escalation_decision]
    return [{"week": w["week"], **{labels[k]: w.get(k) for k in shown}} for w in weeks]


def _drift_line(drift: dict[str, Any]) -> str:
    if drift.get("status") != "checked":
        return f"**Drift:** not checked: {drift.get('reason', drift.get('status', 'no result'))}."
    features = drift.get("drifted_columns") or "none"
    trigger = drift.get("trigger") or {}
    text = (f"**Drift: {'DRIFT' if drift['drift_detected'] else 'none'}** in the last 7 days against champion "
            f"v{drift['champion_version']}'s training window: drifted features {features} "
            f"({drift['drifted_share']:.0%}); score {'drifted' if drift['score_drifted'] else 'stable'} "
            f"(distance {drift.get('score_distance', 0):.3f}); outcome rate {_fmt(drift.get('outcome_rate_reference'))} -> "
            f"{_fmt(drift.get('outcome_rate_current'))}, outside change {_fmt(drift.get('outcome_rate_outside'))}.")
    if trigger:
        text += f" Retraining trigger **{'fired' if trigger['triggered'] else 'not fired'}**: {trigger['reason']}."
    links = _links(("MLflow monitoring run", drift.get("mlflow_url")), ("Evidently report", drift.get("report_url")))
    return f"{text} {links}".rstrip()


def _retrain_lines(model: str, result: dict[str, Any], training_url: str | None) -> list[str]:
    retrain, reason = result.get("retrain") or {}, result.get("retrain_reason")
    status = retrain.get("status")
    if status != "trained":
        why = retrain.get("reason") or {"not_due": "not due (no trigger, trained within the schedule)"}.get(status, status)
        return [f"**Retraining{f' ({reason})' if reason else ''}:** no new model: {why}."]
    lines = [f"**Retraining ({reason}): {retrain['event']}** for version {retrain['version']} "
             f"(threshold {retrain['threshold']:.3f}). Why: {'; '.join(retrain['reasons'])}. "
             + _links(("MLflow training run", training_url))]
    alpha = retrain.get("one_sided_alpha")
    if retrain.get("differences"):
        level = f"{1 - 2 * alpha:.0%} " if alpha else ""
        lines += ["", f"Challenger − champion on the same most recent labelled weeks, paired {level}intervals:", "",
                  markdown_table(retrain["differences"])]
    elif retrain.get("comparison"):
        lines += ["", "Challenger (no champion to compare with; absolute gates):", "", markdown_table(retrain["comparison"])]
    if retrain.get("policy_values"):
        lines += ["", "Off-policy value per decision (EUR) with intervals, coverage and effective sample size:", "",
                  markdown_table(retrain["policy_values"])]
    if retrain.get("event") == "awaiting_approval":
        lines += ["", f"Waiting for a person: `loop approve {model} {retrain['version']} --by NAME` or `loop reject ...`."]
    return lines


def cycle_summary(week: str, ingested: dict[str, int], rows: list[dict[str, Any]], models: dict[str, dict[str, Any]],
                  specs: dict[str, ModelSpec], training_urls: dict[str, str | None]) -> str:
    """The weekly cycle's report: what came in, and per model drift, the promotion decision and why, and the KPIs."""
    lines = [f"# Self-optimising cycle {week}", "",
             (f"**Ingested:** {ingested.get('actions_stored', 0):,} actions and {ingested.get('outcomes_stored', 0):,} "
              f"outcomes from {ingested.get('files', 0)} file(s) ({ingested.get('rows_read', 0):,} rows read; "
              f"{ingested.get('duplicates', 0):,} duplicates, {ingested.get('quarantined', 0):,} quarantined, "
              f"{ingested.get('failed_files', 0)} unreadable file(s))."), "",
             markdown_table(rows)]
    for model, result in models.items():
        spec = specs[model]
        drift = result.get("drift") or {}
        lines += ["", f"## `{model}`", ""]
        if not drift:  # the week was already claimed by another run
            lines.append(f"Nothing done: {(result.get('retrain') or {}).get('status', 'no result')}.")
            continue
        lines += [_drift_line(drift), "", *_retrain_lines(model, result, training_urls.get(model))]
        kpis = drift.get("kpis") or {}
        if kpis.get("weeks"):
            lines += ["", f"**KPIs per week** (decision figures final when the week is over, outcome figures "
                          f"{spec.outcomes.maturity_days} days later): "
                          + _links(("KPI history in MLflow", kpis.get("mlflow_url")),
                                   ("Evidently dashboard", kpis.get("dashboard_url"))), "",
                      markdown_table(kpi_rows(spec, kpis["weeks"]))]
    return "\n".join(lines)
