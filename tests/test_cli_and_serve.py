"""The `loop` command line (exit codes scripts rely on) and the served deployments' schedules."""

from __future__ import annotations

from datetime import timedelta

import pytest

import polars as pl
from typer.testing import CliRunner

from features.spec import SpecError, parse_spec
from flows.cli import EXIT_REFUSED, EXIT_REJECTED, app
from tests.helpers import lead_action

runner = CliRunner()


def test_ingest_exit_code_says_whether_anything_was_rejected(loop_home, tmp_path):
    clean = tmp_path / "clean.csv"
    pl.DataFrame([lead_action("a1"), lead_action("a2")]).write_csv(clean)
    dirty = tmp_path / "dirty.csv"
    pl.DataFrame([lead_action("b1"), lead_action("b2", score="2")]).write_csv(dirty)

    ok = runner.invoke(app, ["ingest", str(clean), "--as-of", "2026-02-01T00:00:00+00:00"])
    assert ok.exit_code == 0, ok.output
    assert "stored 2 actions" in ok.output

    rejected = runner.invoke(app, ["ingest", str(dirty), "--as-of", "2026-02-01T00:00:00+00:00"])
    assert rejected.exit_code == EXIT_REJECTED
    assert "1 quarantined" in rejected.output

    again = runner.invoke(app, ["ingest", str(clean), "--as-of", "2026-02-01T00:00:00+00:00"])
    assert again.exit_code == 0 and "stored 0 actions" in again.output and "2 duplicates" in again.output

    listed = runner.invoke(app, ["quarantine"])
    assert listed.exit_code == 0 and "score 2 is outside [0, 1]" in listed.output


def test_missing_input_and_unknown_model_fail_with_a_clear_message(loop_home, tmp_path):
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["train", "churn"])
    assert unknown.exit_code == 1 and "unknown model 'churn'" in unknown.output


def test_approving_when_nothing_waits_is_refused(loop_home):
    result = runner.invoke(app, ["approve", "lead_scoring", "7", "--by", "anna"])
    assert result.exit_code == EXIT_REFUSED and "no version '7' in the registry (no versions registered yet)" in result.output


def test_a_broken_spec_names_the_file_and_the_problem(tmp_path, specs):
    text = specs["lead_scoring"].source_text.replace('type = "numeric"', 'type = "number"', 1)
    try:
        parse_spec(text, tmp_path / "broken.toml")
    except SpecError as exc:
        assert "broken.toml" in str(exc) and "'number'" in str(exc)
    else:
        raise AssertionError("a feature type 'number' must be refused")


def test_an_unknown_estimator_is_refused_with_the_choices(tmp_path, specs):
    text = specs["lead_scoring"].source_text.replace('estimator = "logistic"', 'estimator = "xgboost"', 1)
    with pytest.raises(SpecError, match=r"\[training\] estimator is 'xgboost'; expected one of gradient_boosting, logistic"):
        parse_spec(text, tmp_path / "broken.toml")


def test_an_unknown_new_categories_choice_is_refused(tmp_path, specs):
    text = specs["lead_scoring"].source_text.replace('new_categories = "rule"', 'new_categories = "ignore"', 1)
    with pytest.raises(SpecError, match="new_categories is 'ignore'; expected one of rule, model"):
        parse_spec(text, tmp_path / "broken.toml")


def test_served_deployments_have_the_documented_schedules(specs):
    from flows.serve import build_deployments

    deployments = {d.name: d for d in build_deployments(list(specs))}
    assert set(deployments) == {"inbox-every-15-minutes", "weekly-cycle", "store-maintenance-daily", "monitor-lead_scoring-daily",
                                "monitor-reply_acceptance-daily", "retrain-lead_scoring-weekly",
                                "retrain-reply_acceptance-weekly", "approve-promotion"}
    weekly = deployments["retrain-lead_scoring-weekly"].schedules[0].schedule
    assert (weekly.cron, weekly.timezone) == ("0 3 * * 1", "Europe/Berlin")
    assert deployments["inbox-every-15-minutes"].schedules[0].schedule.interval == timedelta(minutes=15)
    assert deployments["retrain-lead_scoring-weekly"].parameters == {"model": "lead_scoring"}
    # The approval runs are started by the retraining (one per waiting promotion), never by a clock.
    assert deployments["approve-promotion"].schedules == [] and deployments["approve-promotion"].concurrency_limit is None


def test_commands_that_store_ids_refuse_to_run_without_a_pseudonym_key(loop_home, tmp_path, monkeypatch, capsys):
    import sys

    from flows.cli import main

    monkeypatch.delenv("LOOP_PSEUDONYM_KEY")
    path = tmp_path / "a.csv"
    pl.DataFrame([lead_action("a1")]).write_csv(path)
    monkeypatch.setattr(sys, "argv", ["loop", "ingest", str(path), "--as-of", "2026-02-01T00:00:00+00:00"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert "LOOP_PSEUDONYM_KEY is not set" in capsys.readouterr().out
    assert runner.invoke(app, ["status", "--json"]).exit_code == 0     # reading needs no key


def test_an_exploration_share_for_the_rule_outside_its_range_is_refused(tmp_path, specs):
    text = specs["lead_scoring"].source_text.replace("rule_share = 0.0", "rule_share = 0.7", 1)
    with pytest.raises(SpecError, match=r"\[exploration\] needs 0 <= rule_share < 0.5, got 0.7"):
        parse_spec(text, tmp_path / "broken.toml")
    assert parse_spec(specs["lead_scoring"].source_text, tmp_path / "ok.toml").exploration.rule_share == 0.0


def test_an_unknown_value_interval_is_refused(tmp_path, specs):
    text = specs["lead_scoring"].source_text.replace('value_interval = "bootstrap"', 'value_interval = "wide"', 1)
    with pytest.raises(SpecError, match=r"\[gates\] value_interval must be 'widened' or 'bootstrap', not 'wide'"):
        parse_spec(text, tmp_path / "broken.toml")
    assert parse_spec(specs["lead_scoring"].source_text, tmp_path / "ok.toml").gates.value_interval == "bootstrap"
    assert specs["reply_acceptance"].gates.value_interval == "widened"
