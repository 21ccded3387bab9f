"""Approval requests on a real Prefect API (the session's test harness) and a real MLflow registry:
a paused approval run answered through its typed form (as the UI does, with resume_flow_run from
another thread), a time-out that expires as rejected, the command line answering first, and the
retraining's start of the approval run through its deployment."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.runtime import Runtime
from models.promotion import AuditTrail, PromotionDecision, apply_decision, expire_overdue

MODEL = "lead_scoring"
NOW = datetime(2026, 3, 2, 3, tzinfo=UTC)
WEEK = "2026-W10"
DECISIONS = ("approved", "rejected", "approval_expired")


def _waiting_promotion(loop_home, with_champion: bool = True) -> Runtime:
    """Champion version 1 (or none: the cold-start rule decides); version 2 waits for a person, put there by the
    same code the retraining uses."""
    runtime = Runtime.from_env()
    store, registry = runtime.store, runtime.registry
    with store.writer():
        pass
    registry.client.create_registered_model(MODEL)
    for _ in range(2):
        registry.client.create_model_version(MODEL, source=(loop_home / "model").as_uri())
    audit = AuditTrail(store, registry, NOW)
    if with_champion:
        apply_decision(PromotionDecision("promote", ("first model",)), MODEL, "1", registry, audit, "2026-W09")
    event = apply_decision(PromotionDecision("await_approval", ("41.0% of recent decisions would flip",), 0.41),
                           MODEL, "2", registry, audit, WEEK)
    assert event == "awaiting_approval"
    return runtime


def _decisions(runtime: Runtime) -> pl.DataFrame:
    return (runtime.store.scan_audit().filter((pl.col("model") == MODEL) & (pl.col("version") == "2")
                                              & pl.col("event").is_in(DECISIONS)).collect())


class _ApprovalRun:
    """The approval flow running in its own thread, as it would in its own served process."""

    def __init__(self) -> None:
        from flows.approval import approval_flow

        self.result, self.error, self.description = None, None, ""

        def run() -> None:
            try:
                self.result = approval_flow(MODEL, "2", WEEK, poll_seconds=1)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def paused(self, seconds: float = 90):
        """The paused flow run, once its form (the input schema and its description, kept as ``self.description``)
        is saved: what the UI needs.

        Prefect pauses the run first and saves the schema, then the description, after it: a run can be
        paused with no form yet, which the server answers with 404 (PrefectHTTPStatusError from the sync client).
        """
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
        from prefect.input.run_input import keyset_from_paused_state

        deadline = time.monotonic() + seconds
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and self.thread.is_alive():
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"approval-{MODEL}-v2-{WEEK}"]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if runs:
                    keyset = keyset_from_paused_state(runs[0].state)
                    try:
                        client.read_flow_run_input(runs[0].id, keyset["schema"])
                        self.description = client.read_flow_run_input(runs[0].id, keyset["description"])
                        return runs[0]
                    except ObjectNotFound:
                        pass
                    except PrefectHTTPStatusError as error:
                        if error.response.status_code != 404:
                            raise
                time.sleep(0.2)
        pytest.fail(f"no paused approval run appeared (flow ended with {self.error!r} / {self.result!r})")

    def finish(self, seconds: float = 90):
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "the approval run did not end"
        return self.result, self.error


def _final_state(flow_run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def test_an_answer_in_the_form_approves_the_version(loop_home, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    runtime = _waiting_promotion(loop_home)
    waiting = _ApprovalRun()
    run = waiting.paused()
    assert "it would replace the champion (version 1)" in waiting.description
    # The form is typed: the server refuses an answer that is neither approve nor reject, and the run stays paused.
    with pytest.raises(RuntimeError, match="Cannot resume this run"):
        resume_flow_run(run.id, run_input={"decision": "maybe", "name": "anna", "reason": "?"})
    assert _final_state(run.id).is_paused()

    resume_flow_run(run.id, run_input={"decision": "approve", "name": "anna", "reason": "flip share expected after the new source"})
    result, error = waiting.finish()
    assert error is None and result["outcome"] == "approved"
    assert _final_state(run.id).is_completed()

    registry = runtime.registry
    assert str(registry.version_by_alias(MODEL, "champion").version) == "2"
    assert registry.version_by_alias(MODEL, "challenger") is None
    tags = registry.get_version(MODEL, "2").tags
    assert (tags["decision"], tags["decision_by"], tags["previous_champion"]) == ("approved", "anna", "1")
    assert tags["decision_reasons"] == "flip share expected after the new source"
    row = _decisions(runtime)
    assert row.select("event", "actor", "reasons", "week").rows() == [
        ("approved", "anna", "flip share expected after the new source", WEEK)]


def test_a_rejection_in_the_form_keeps_the_champion(loop_home, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    runtime = _waiting_promotion(loop_home)
    waiting = _ApprovalRun()
    resume_flow_run(waiting.paused().id, run_input={"decision": "reject", "name": "ben", "reason": "too many meetings"})
    result, error = waiting.finish()
    assert error is None and result["outcome"] == "rejected"

    registry = runtime.registry
    assert str(registry.version_by_alias(MODEL, "champion").version) == "1"
    assert registry.version_by_alias(MODEL, "challenger") is None
    tags = registry.get_version(MODEL, "2").tags
    assert (tags["decision"], tags["decision_by"], tags["decision_reasons"]) == ("rejected", "ben", "too many meetings")
    assert _decisions(runtime).select("event", "actor").rows() == [("rejected", "ben")]


def test_a_first_model_waiting_for_a_person_is_weighed_against_the_cold_start_rule(loop_home, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    runtime = _waiting_promotion(loop_home, with_champion=False)
    waiting = _ApprovalRun()
    run = waiting.paused()
    assert "it would replace the cold-start rule" in waiting.description
    assert "reject to keep the cold-start rule" in waiting.description
    resume_flow_run(run.id, run_input={"decision": "reject", "name": "carla", "reason": "meetings for most web leads"})
    result, error = waiting.finish()
    assert error is None and result["outcome"] == "rejected"
    # Nothing became champion: the rule keeps deciding.
    assert runtime.registry.version_by_alias(MODEL, "champion") is None
    assert runtime.registry.version_by_alias(MODEL, "challenger") is None
    assert _decisions(runtime).select("event", "actor").rows() == [("rejected", "carla")]


def test_an_unanswered_request_expires_as_rejected(loop_home, prefect_harness, tmp_path, monkeypatch):
    from flows.approval import ApprovalExpired

    specs = tmp_path / "specs"
    shutil.copytree(Runtime.from_env().settings.specs_dir, specs)
    spec = specs / f"{MODEL}.toml"
    text = spec.read_text()
    assert "approval_timeout_hours = 72" in text
    spec.write_text(text.replace("approval_timeout_hours = 72", "approval_timeout_hours = 0.001"))  # 3.6 s
    monkeypatch.setenv("LOOP_SPECS_DIR", str(specs))

    runtime = _waiting_promotion(loop_home)
    waiting = _ApprovalRun()
    run = waiting.paused()
    result, error = waiting.finish()
    assert isinstance(error, ApprovalExpired), (result, error)
    assert _final_state(run.id).is_failed()     # the UI shows the request ended without an answer

    registry = runtime.registry
    assert str(registry.version_by_alias(MODEL, "champion").version) == "1"
    assert registry.version_by_alias(MODEL, "challenger") is None
    tags = registry.get_version(MODEL, "2").tags
    assert (tags["decision"], tags["decision_by"]) == ("approval_expired", "timeout")
    rows = _decisions(runtime)
    assert rows.select("event", "actor", "week").rows() == [("approval_expired", "timeout", WEEK)]
    assert "expired as rejected" in rows["reasons"][0]
    # The daily maintenance's backstop finds nothing left to expire: nothing is recorded twice.
    assert expire_overdue(runtime.store, registry, {MODEL: 0.001}, datetime.now(UTC) + timedelta(hours=1)) == []


def test_an_answer_from_the_command_line_ends_the_waiting_run_without_a_second_decision(loop_home, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    from flows.cli import app

    runtime = _waiting_promotion(loop_home)
    waiting = _ApprovalRun()
    run = waiting.paused()
    cli = CliRunner().invoke(app, ["approve", MODEL, "2", "--by", "carla", "--reason", "checked the flips by hand"])
    assert cli.exit_code == 0, cli.output
    # Later someone answers the form that is still open, with the opposite decision: it must not count.
    resume_flow_run(run.id, run_input={"decision": "reject", "name": "dave", "reason": "late answer"})
    result, error = waiting.finish()
    assert error is None and result["outcome"] == "already_decided"
    assert result["on_record"] == "approved by carla"
    assert _final_state(run.id).is_completed()

    assert str(runtime.registry.version_by_alias(MODEL, "champion").version) == "2"
    assert runtime.registry.get_version(MODEL, "2").tags["decision_by"] == "carla"
    assert _decisions(runtime).select("event", "actor").rows() == [("approved", "carla")]


def test_the_command_line_closes_the_open_form_on_a_prefect_server(loop_home, prefect_harness, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from flows.cli import app

    runtime = _waiting_promotion(loop_home)
    waiting = _ApprovalRun()
    run = waiting.paused()
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())   # as with `loop serve` on a server
    cli = CliRunner().invoke(app, ["reject", MODEL, "2", "--by", "erik"])
    assert cli.exit_code == 0, cli.output
    assert "closed 1 approval request" in cli.output
    result, error = waiting.finish()       # nobody touches the form: the command line ended the run
    assert error is None and result["outcome"] == "already_decided" and result["on_record"] == "rejected by erik"
    assert _final_state(run.id).is_completed()
    assert _decisions(runtime).select("event", "actor").rows() == [("rejected", "erik")]


def test_a_time_out_that_is_not_positive_is_refused(specs, tmp_path):
    from features.spec import SpecError, parse_spec

    text = specs[MODEL].source_text.replace("approval_timeout_hours = 72", "approval_timeout_hours = 0")
    with pytest.raises(SpecError, match="approval_timeout_hours must be positive"):
        parse_spec(text, tmp_path / "x.toml")


def test_the_retraining_starts_one_approval_run_through_the_deployment(loop_home, prefect_harness):
    from prefect import get_client

    from flows.approval import approval_flow, request_approval

    # Without `loop serve` there is no approval deployment: nothing is started, the CLI answers.
    assert request_approval.fn(MODEL, "2", WEEK) is None
    deployment_id = approval_flow.to_deployment(name="approve-promotion").apply()
    try:
        first = request_approval.fn(MODEL, "2", WEEK)
        again = request_approval.fn(MODEL, "2", WEEK)   # a retried task or a second start of the week
        assert first is not None and again == first
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(first)
            assert run.deployment_id == deployment_id
            assert run.parameters == {"model": MODEL, "version": "2", "week": WEEK}
            assert run.state.is_scheduled()    # created and left for the served deployment to run
            client.delete_flow_run(run.id)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_maintenance_expires_requests_whose_approval_run_is_gone(loop_home):
    runtime = _waiting_promotion(loop_home)
    timeouts = {MODEL: 72.0, "reply_acceptance": 72.0}
    now = datetime.now(UTC)
    assert expire_overdue(runtime.store, runtime.registry, timeouts, now + timedelta(hours=71)) == []
    assert expire_overdue(runtime.store, runtime.registry, timeouts, now + timedelta(hours=73)) == [(MODEL, "2")]
    assert expire_overdue(runtime.store, runtime.registry, timeouts, now + timedelta(hours=74)) == []
    assert runtime.registry.version_by_alias(MODEL, "challenger") is None
    assert _decisions(runtime).select("event", "actor", "week").rows() == [("approval_expired", "timeout", WEEK)]


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def _aliases_and_audit(runtime: Runtime) -> tuple:
    """What a refused command must leave exactly as it was: both aliases and the audit table."""
    registry = runtime.registry
    champion, challenger = registry.version_by_alias(MODEL, "champion"), registry.version_by_alias(MODEL, "challenger")
    return (champion and str(champion.version), challenger and str(challenger.version),
            runtime.store.scan_audit().collect().height)


def test_approve_and_reject_refuse_a_version_that_does_not_exist(loop_home):
    from flows.cli import EXIT_REFUSED

    runtime = _waiting_promotion(loop_home)
    before = _aliases_and_audit(runtime)
    for command in ("approve", "reject"):
        result = _cli(command, MODEL, "9", "--by", "anna")
        assert result.exit_code == EXIT_REFUSED, result.output
        assert "refused: lead_scoring has no version '9' in the registry (versions: 1, 2)" in result.output
    not_a_number = _cli("approve", MODEL, "v2", "--by", "anna")
    assert not_a_number.exit_code == EXIT_REFUSED and "no version 'v2'" in not_a_number.output
    unknown = _cli("approve", "churn", "2", "--by", "anna")
    assert unknown.exit_code == EXIT_REFUSED and "unknown model 'churn'" in unknown.output
    assert _aliases_and_audit(runtime) == before


def test_approve_and_reject_refuse_a_version_that_does_not_wait_for_approval(loop_home):
    from flows.cli import EXIT_REFUSED

    runtime = _waiting_promotion(loop_home)
    champion = _cli("approve", MODEL, "1", "--by", "anna")
    assert champion.exit_code == EXIT_REFUSED, champion.output
    assert ("lead_scoring version 1 is not waiting for approval: it is the champion; "
            "waiting for approval: version 2") in champion.output

    assert _cli("reject", MODEL, "2", "--by", "ben", "--reason", "too many meetings").exit_code == 0
    before = _aliases_and_audit(runtime)
    for command in ("approve", "reject"):   # a second answer to a decided request: refused, the first counts
        late = _cli(command, MODEL, "2", "--by", "carla")
        assert late.exit_code == EXIT_REFUSED, late.output
        assert ("lead_scoring version 2 is not waiting for approval: it was rejected (by ben); "
                "waiting for approval: none") in late.output
    assert _aliases_and_audit(runtime) == before == ("1", None, before[2])
    assert runtime.registry.get_version(MODEL, "2").tags["decision_by"] == "ben"


def test_rollback_refuses_when_there_is_no_previous_champion_to_restore(loop_home):
    from flows.cli import EXIT_REFUSED

    nothing = _cli("rollback", "reply_acceptance", "--by", "anna")   # no model registered at all
    assert nothing.exit_code == EXIT_REFUSED and "reply_acceptance has no champion to roll back" in nothing.output
    unknown = _cli("rollback", "churn", "--by", "anna")
    assert unknown.exit_code == EXIT_REFUSED and "unknown model 'churn'" in unknown.output

    runtime = _waiting_promotion(loop_home)
    before = _aliases_and_audit(runtime)
    first = _cli("rollback", MODEL, "--by", "anna")
    assert first.exit_code == EXIT_REFUSED, first.output
    assert "champion version 1 replaced no earlier champion: there is no previous champion to restore" in first.output
    assert _aliases_and_audit(runtime) == before

    assert _cli("approve", MODEL, "2", "--by", "anna").exit_code == 0
    back = _cli("rollback", MODEL, "--by", "ben", "--reason", "complaints")
    assert back.exit_code == 0 and "champion is version 1 again" in back.output
    rolled = runtime.store.scan_audit().filter(pl.col("event") == "rolled_back").collect()
    assert rolled.select("version", "actor").rows() == [("1", "ben")]
    # Version 1 replaced the cold-start rule, not a model: a second rollback has nowhere to go.
    before = _aliases_and_audit(runtime)
    again = _cli("rollback", MODEL, "--by", "ben")
    assert again.exit_code == EXIT_REFUSED and "champion version 1 replaced no earlier champion" in again.output
    assert _aliases_and_audit(runtime) == before


def test_rollback_refuses_when_the_previous_champion_left_the_registry(loop_home):
    from flows.cli import EXIT_REFUSED

    runtime = _waiting_promotion(loop_home)
    assert _cli("approve", MODEL, "2", "--by", "anna").exit_code == 0
    runtime.registry.client.delete_model_version(MODEL, "1")
    before = _aliases_and_audit(runtime)
    gone = _cli("rollback", MODEL, "--by", "ben")
    assert gone.exit_code == EXIT_REFUSED, gone.output
    assert "champion version 2 replaced version 1, which is no longer in the registry" in gone.output
    assert _aliases_and_audit(runtime) == before == ("2", None, before[2])
