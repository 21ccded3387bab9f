"""The approval request: a flow run of its own that waits for a person's answer in the Prefect UI.

When the gates say a challenger needs a person (too many decisions would flip), the retraining
starts this flow through its deployment and ends; the weekly retraining's concurrency slot is free
while a person thinks it over. This run pauses with a typed form (approve or reject, name, reason).
The answer goes through the same code as `loop approve` / `loop reject`, so it lands on the model
version's tags and in the audit table. If the command line answered first, the run notices the
version no longer waits and ends without recording anything. A request not answered within the
spec's `approval_timeout_hours` expires as rejected (actor `timeout`), and the run fails so the UI
and the failed-run alert show it.

Why a pause and not a suspension: a suspended run frees its process but is re-run from the top on
resume and its time-out is enforced by the server alone (a failed state, no code of ours runs), so
the expiry would need a second mechanism to be recorded. A paused run keeps a small process (one
API read per poll) but catches its own time-out and records it. The daily maintenance also expires
overdue requests (`expire_overdue`), so an expiry is recorded even if this process died meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field

from flows.runtime import Runtime
from models.promotion import EXPIRED, ApprovalError, AuditTrail, answer, expire, is_pending
from models.registry import CHAMPION

APPROVAL_DEPLOYMENT = "approval/approve-promotion"
ALREADY_DECIDED = "already_decided"


class ApprovalAnswer(RunInput):
    """The form shown on the paused run in the Prefect UI (the server refuses input that does not fit it)."""

    decision: Literal["approve", "reject"] = Field(description="approve: the challenger becomes champion; "
                                                              "reject: the champion stays")
    name: str = Field(min_length=1, description="Who decides (recorded in the audit table and on the version)")
    reason: str = Field(default="", description="Why")


class ApprovalExpired(RuntimeError):
    """Nobody answered in time; the request was recorded as rejected."""


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"approval-{params['model']}-v{params['version']}-{params.get('week') or 'now'}"


def _audit(runtime: Runtime) -> AuditTrail:
    # The answer happens now, in wall-clock time, whatever as-of time the retraining used.
    return AuditTrail(runtime.store, runtime.registry, datetime.now(UTC))


def _last_decision(runtime: Runtime, model: str, version: str) -> str:
    import polars as pl

    rows = (runtime.store.scan_audit().filter((pl.col("model") == model) & (pl.col("version") == str(version)))
            .sort("recorded_at").collect())
    return f"{rows['event'][-1]} by {rows['actor'][-1]}" if rows.height else "no decision recorded"


@task(cache_policy=NO_CACHE)
def open_request(model: str, version: str) -> dict | None:
    """What the person is asked, or None when the version no longer waits (answered from the command line)."""
    runtime = Runtime.from_env()
    if not is_pending(model, version, runtime.registry):
        return None
    asked = runtime.registry.get_version(model, version)
    champion = runtime.registry.version_by_alias(model, CHAMPION)
    return {"reasons": asked.tags.get("decision_reasons", ""), "champion": champion.version if champion else None,
            "timeout_hours": runtime.spec(model).gates.approval_timeout_hours}


@task(cache_policy=NO_CACHE)
def apply_answer(model: str, version: str, decision: str, by: str, reason: str, week: str) -> str:
    """The event recorded, or `already_decided` when the command line (or a time-out) came first."""
    runtime = Runtime.from_env()
    try:
        return answer(model, version, decision, by, reason, runtime.registry, _audit(runtime), week)
    except ApprovalError:
        return ALREADY_DECIDED


@task(cache_policy=NO_CACHE)
def record_expiry(model: str, version: str, timeout_hours: float, week: str) -> str:
    runtime = Runtime.from_env()
    try:
        expire(model, version, timeout_hours, runtime.registry, _audit(runtime), week)
        return EXPIRED
    except ApprovalError:
        return ALREADY_DECIDED


@task(cache_policy=NO_CACHE)
def decision_on_record(model: str, version: str) -> str:
    return _last_decision(Runtime.from_env(), model, version)


@flow(name="approval", flow_run_name=_run_name)
def approval_flow(model: str, version: str, week: str = "", poll_seconds: int = 10) -> dict:
    """Wait for a person to approve or reject a challenger; apply the answer like `loop approve` / `loop reject`."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    result = {"model": model, "version": str(version), "week": week}
    request = open_request(model, version)
    if request is None:
        return {**result, "outcome": ALREADY_DECIDED, "on_record": decision_on_record(model, version)}
    hours = request["timeout_hours"]
    incumbent = f"the champion (version {request['champion']})" if request["champion"] else "the cold-start rule"
    form = ApprovalAnswer.with_initial_data(description=(
        f"**{model} version {version}** waits for approval; it would replace {incumbent}.\n\n"
        f"{request['reasons']}\n\nApprove to make it champion, reject to keep {incumbent}. "
        f"Unanswered, the request expires as rejected after {hours:g} h."))
    try:
        given = pause_flow_run(wait_for_input=form, timeout=max(1, round(hours * 3600)), poll_interval=poll_seconds,
                               key="approval")
    except FlowPauseTimeout:
        outcome = record_expiry(model, version, hours, week)
        if outcome == ALREADY_DECIDED:   # answered from the command line meanwhile: nothing expired
            return {**result, "outcome": outcome, "on_record": decision_on_record(model, version)}
        _summary(model, version, f"expired after {hours:g} h without an answer: recorded as rejected (actor timeout)")
        raise ApprovalExpired(f"{model} version {version}: no answer within {hours:g} h; recorded as rejected "
                              f"({EXPIRED}, actor timeout)") from None
    outcome = apply_answer(model, version, given.decision, given.name, given.reason, week)
    if outcome == ALREADY_DECIDED:
        on_record = decision_on_record(model, version)
        _summary(model, version, f"answered '{given.decision}' by {given.name}, but the request was already decided "
                                 f"({on_record}): nothing recorded")
        return {**result, "outcome": outcome, "on_record": on_record}
    _summary(model, version, f"{outcome} by {given.name}: {given.reason or '(no reason given)'}")
    return {**result, "outcome": outcome, "by": given.name, "reason": given.reason}


def _summary(model: str, version: str, text: str) -> None:
    create_markdown_artifact(markdown=f"# Approval of {model} version {version}\n\n{text}\n",
                             key=f"{model.replace('_', '-')}-approval", description=f"{model} v{version}: {text[:80]}")


@task(cache_policy=NO_CACHE)
def request_approval(model: str, version: str, week: str) -> str | None:
    """Start the approval flow through its deployment and return at once (the retraining does not wait).

    Returns the approval run's id, or None when no approval deployment is registered (a local run
    or the demo, without `loop serve`): then `loop approve` / `loop reject` is the way to answer.
    The idempotency key makes a retried or repeated start find the same request, not open a second.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(APPROVAL_DEPLOYMENT, parameters={"model": model, "version": str(version), "week": week},
                             timeout=0, as_subflow=False, idempotency_key=f"approval-{model}-{version}",
                             tags=[f"loop.model.{model}", "approval"])
    except ObjectNotFound:
        return None
    return str(run.id)


def close_open_requests(model: str, version: str, decision: str, by: str, reason: str) -> int:
    """After an answer from the command line, resume the approval runs still waiting on the same version.

    They find the version decided and end without recording anything, instead of showing an open form
    (and keeping their process) until the time-out. Returns how many were resumed.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import PrefectException
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["approval"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    resumed = 0
    for run in runs:
        if run.parameters.get("model") != model or str(run.parameters.get("version")) != str(version):
            continue
        try:
            resume_flow_run(run.id, run_input={"decision": decision, "name": by,
                                               "reason": "answered from the command line" + (f": {reason}" if reason else "")})
            resumed += 1
        except (PrefectException, RuntimeError):  # it ended or timed out meanwhile: nothing left to close
            continue
    return resumed
