"""`loop`: the command line of the self-optimising feedback loop.

Exit codes: 0 success; 1 error (bad input, unknown model, failed run); 3 ingest finished but
rejected rows or files (they are in quarantine / failed); 4 a check failed (demo, reproduce, doctor);
5 refused: approve, reject or rollback named a model or version that does not exist or is not in the
state the command needs (nothing changed).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from features.settings import prepare_environment

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(soft_wrap=True)  # whole lines in logs and pipes, so scripts can grep them
EXIT_ERROR, EXIT_REJECTED, EXIT_CHECK_FAILED, EXIT_REFUSED = 1, 3, 4, 5

AsOf = Annotated[Optional[datetime], typer.Option(
    "--as-of", help="Treat this moment as 'now' (ISO time, UTC if no offset). Default: the system clock.")]


def _now(as_of: datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(UTC)
    return as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)


def _runtime():
    prepare_environment()
    from flows.runtime import Runtime

    return Runtime.from_env()


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def ingest(paths: Annotated[list[Path], typer.Argument(help="CSV, Parquet or JSON Lines files, or folders of them.")],
           as_of: AsOf = None) -> None:
    """Validate action/outcome files and store them; bad rows go to quarantine with a reason."""
    runtime = _runtime()
    from features.clock import SimulatedClock
    from features.ingest import discover, ingest_paths

    try:
        files = [f for p in paths for f in discover(p)]
    except FileNotFoundError as exc:
        _fail(str(exc))
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("ingesting", total=len(files))
        total = ingest_paths(files, runtime.store, SimulatedClock(_now(as_of)), runtime.settings.pseudonym_key,
                             progress=lambda _file: progress.advance(bar))
    counts = total.as_dict()
    console.print(f"read {counts['rows_read']} rows from {counts['files']} file(s): stored {counts['actions_stored']} actions "
                  f"and {counts['outcomes_stored']} outcomes, {counts['duplicates']} duplicates, "
                  f"{counts['quarantined']} quarantined, {counts['failed_files']} file(s) unreadable")
    for source, reason in total.failed_files:
        console.print(f"  [yellow]unreadable[/yellow] {source}: {reason}")
    if not total.clean:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def quarantine(limit: Annotated[int, typer.Option(help="Show at most this many rows.")] = 20,
               replay: Annotated[bool, typer.Option("--replay", help="Re-ingest quarantined rows after the spec or the "
                                                    "data was fixed; rows now valid leave quarantine.")] = False,
               as_of: AsOf = None) -> None:
    """List rejected rows with the file, row number and reason; or replay them."""
    import polars as pl

    runtime = _runtime()
    if replay:
        from features.clock import SimulatedClock
        from features.ingest import replay_quarantine

        report = replay_quarantine(runtime.store, SimulatedClock(_now(as_of)), runtime.settings.pseudonym_key)
        counts = report.as_dict()
        console.print(f"replayed {counts['rows_read']} rows: stored {counts['actions_stored']} actions and "
                      f"{counts['outcomes_stored']} outcomes, {counts['quarantined']} still quarantined")
        if counts["quarantined"]:
            raise typer.Exit(EXIT_REJECTED)
        return
    rows = runtime.store.scan_quarantine().sort("quarantined_at", descending=True).head(limit).collect()
    if rows.is_empty():
        console.print("quarantine is empty")
        return
    with pl.Config(fmt_str_lengths=120, tbl_width_chars=200, tbl_rows=limit):
        console.print(rows.select("source_file", "row_number", "reason"))


@app.command()
def reproduce(model: Annotated[str, typer.Argument(help="Model name.")],
              run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")]) -> None:
    """Rebuild a training run's data from the store, retrain with its spec and seed, and compare (exit 4 if it differs)."""
    runtime = _runtime()
    from models.reproduce import reproduce_run

    again = reproduce_run(runtime.registry, runtime.store, runtime.spec(model), run_id)
    console.print(again.rebuild.explain())
    for name, (logged, now) in again.differences().items():
        console.print(f"  {name}: logged {logged:.6f}, reproduced {now:.6f}")
    console.print("identical" if again.identical else "NOT identical")
    if not again.identical:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def doctor(repair: Annotated[bool, typer.Option("--repair", help="Also repair what is safe to repair.")] = False) -> None:
    """Check that registry aliases, audit table, week ledger and store agree (exit 4 if something needs a person)."""
    runtime = _runtime()
    from models.doctor import check

    findings = check(runtime.store, runtime.registry, datetime.now(UTC), repair)
    for finding in findings:
        console.print(finding.line())
    if not findings:
        console.print("all consistent")
    if any(not f.repaired for f in findings):
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def forget(entity: Annotated[str, typer.Argument(help="The person's raw identifier (e-mail, customer or message id) "
                                                 "or its pseudonym (pid_...).")]) -> None:
    """Erase one person: every row in every table, the data files that held them, and derived files."""
    runtime = _runtime()
    from features.erasure import forget as erase

    report = erase(runtime.store, entity, runtime.settings.pseudonym_key, runtime.settings.home,
                   runtime.settings.mlflow_artifact_root)
    for line in report.lines():
        console.print(line)


@app.command()
def maintain(as_of: AsOf = None) -> None:
    """Store maintenance now: drop events past LOOP_RETENTION_MONTHS, compact small files, vacuum old versions."""
    _runtime()
    from flows.maintenance import maintenance_flow

    result = maintenance_flow(as_of=_now(as_of))
    console.print(json.dumps(result, indent=2, default=str))


@app.command()
def migrate() -> None:
    """Upgrade a store written by an older release to this release's layout (safe to run again)."""
    runtime = _runtime()
    from features.migrate import migrate as run_migration

    for line in run_migration(runtime.store, datetime.now(UTC)):
        console.print(line)


@app.command()
def simulate(out: Annotated[Path, typer.Option(help="Folder to write the simulated CRM/mailbox exports to.")] = Path("simulated"),
             weeks: Annotated[int, typer.Option(help="Simulated weeks.")] = 2,
             seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 7,
             leads: Annotated[int, typer.Option(help="Leads per week.")] = 2000,
             emails: Annotated[int, typer.Option(help="E-mails per week.")] = 5000) -> None:
    """Write simulated actions (decided by the cold-start rule) and their observed outcomes as files to ingest."""
    import polars as pl

    runtime = _runtime()
    from models.policy import Policy
    from simulator.world import MODELS, World, WorldConfig

    world = World(WorldConfig(seed=seed, leads_per_week=leads, emails_per_week=emails), runtime.specs)
    out.mkdir(parents=True, exist_ok=True)
    end = world.week_start(weeks)
    for week in range(weeks):
        for model in MODELS:
            spec = runtime.spec(model)
            population = world.population(model, week)
            entities = population.select("entity_ref", pl.col("arrived_at").alias("decided_at"), *spec.feature_names)
            actions = Policy(spec).decide(entities, runtime.settings.pseudonym_key)
            actions.write_csv(out / f"actions-{model}-week{week:02d}.csv")
            events = world.outcome_events(model, population, actions["decision"], actions["action_id"], actions["decided_at"])
            events.filter(pl.col("observed_at") <= end).write_ndjson(out / f"outcomes-{model}-week{week:02d}.jsonl")
    console.print(f"wrote {weeks} week(s) of actions and outcomes to {out}; observed up to {end.isoformat()}. "
                  f"Next: loop ingest {out} --as-of {end.isoformat()}")


@app.command()
def feed(url: Annotated[str, typer.Option(help="The scoring API's address.")] = "http://127.0.0.1:8000",
         weeks: Annotated[int, typer.Option(help="Simulated weeks to send.")] = 1,
         first_week: Annotated[int, typer.Option(help="First simulated week (0-based).")] = 0,
         seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 7) -> None:
    """Play the company's CRM and mailbox against `loop api`: ask for decisions, report outcomes (LOOP_API_TOKEN if set)."""
    import httpx

    from features.settings import Settings
    from features.spec import load_specs
    from simulator.feed import feed_week
    from simulator.world import MODELS, World, WorldConfig

    specs = load_specs(Settings.from_env().specs_dir)
    world = World(WorldConfig(seed=seed), specs)
    token = os.environ.get("LOOP_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client, Progress(console=console) as progress:
        bar = progress.add_task("simulated weeks", total=weeks * len(MODELS))
        for week in range(first_week, first_week + weeks):
            for model in MODELS:
                try:
                    result = feed_week(client, world, specs[model], week)
                except httpx.HTTPError as exc:
                    _fail(f"the scoring API at {url} failed: {exc}")
                progress.console.print(f"week {week} {model}: {result.decisions} decisions ({result.positive} "
                                       f"{specs[model].positive_decision}) by version {', '.join(result.model_versions)}, "
                                       f"{result.outcomes} outcomes reported")
                progress.advance(bar)


@app.command()
def train(model: Annotated[str, typer.Argument(help="Model name, e.g. lead_scoring.")], as_of: AsOf = None) -> None:
    """Retrain MODEL on mature outcomes, log it to MLflow and promote it if the gates pass."""
    runtime = _runtime()
    if model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})")
    from flows.retrain import retrain_flow

    result = retrain_flow(model=model, as_of=_now(as_of))
    console.print(json.dumps({k: v for k, v in result.items() if k != "comparison"}, indent=2, default=str))


@app.command()
def monitor(model: Annotated[str, typer.Argument(help="Model name.")], as_of: AsOf = None) -> None:
    """Check MODEL for drift (Evidently) against its champion's training window."""
    runtime = _runtime()
    if model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})")
    from flows.monitor import monitor_flow

    console.print(json.dumps(monitor_flow(model=model, as_of=_now(as_of)), indent=2, default=str))


@app.command()
def cycle(as_of: AsOf = None) -> None:
    """Run one weekly cycle now: ingest the inbox, monitor, retrain when due or drifted, promote."""
    _runtime()
    from flows.self_optimise import self_optimise_flow

    result = self_optimise_flow(as_of=_now(as_of))
    console.print(json.dumps({m: {"drift": r["drift"].get("drift_detected"), "retrain": r["retrain"].get("event", r["retrain"]["status"])}
                              for m, r in result["models"].items()}, indent=2))


def _status(runtime) -> dict:
    import polars as pl

    store = [s.__dict__ for s in runtime.store.stats()]
    models = {}
    for name in runtime.specs:
        champion = runtime.registry.version_by_alias(name, "champion")
        challenger = runtime.registry.version_by_alias(name, "challenger")
        models[name] = {
            "champion": {"version": champion.version, "threshold": float(champion.tags.get("threshold", "nan")),
                         "since_week": champion.tags.get("week")} if champion else None,
            "awaiting_approval": challenger.version if challenger else None,
        }
    audit = runtime.store.scan_audit().sort("at", descending=True).head(10).collect()
    complete = runtime.store.complete_ingests()
    actions = pl.concat([runtime.store.scan_actions(m, complete).select("action_id") for m in runtime.specs])
    pending = runtime.store.scan_outcomes(complete).join(actions, on="action_id", how="anti").select(pl.len()).collect().item()
    return {"store": store, "models": models, "outcomes_waiting_for_their_action": pending,
            "last_decisions": audit.with_columns(pl.col("at").dt.to_string()).to_dicts()}


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """What the store holds, each model's champion and threshold, pending approvals, the last decisions."""
    runtime = _runtime()
    info = _status(runtime)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    table = Table(title="event store")
    for col in ("table", "rows", "version", "first", "last"):
        table.add_column(col)
    for row in info["store"]:
        table.add_row(*(str(row[c]) for c in ("table", "rows", "version", "first", "last")))
    console.print(table)
    if info["outcomes_waiting_for_their_action"]:
        console.print(f"{info['outcomes_waiting_for_their_action']} outcome(s) wait for their action (kept; joined when it arrives)")
    for name, m in info["models"].items():
        champ = m["champion"]
        text = f"v{champ['version']} threshold {champ['threshold']:.3f} (since {champ['since_week']})" if champ else "none (cold-start rule)"
        console.print(f"[bold]{name}[/bold]: champion {text}" + (f"; v{m['awaiting_approval']} awaits approval" if m["awaiting_approval"] else ""))
    recent = Table(title="last decisions")
    for col in ("at", "model", "version", "event", "actor", "reasons"):
        recent.add_column(col, overflow="fold")
    for row in info["last_decisions"]:
        recent.add_row(*(str(row[c])[:120] for c in ("at", "model", "version", "event", "actor", "reasons")))
    console.print(recent)


def _decision_command(kind: str, model: str, version: str, by: str, reason: str) -> None:
    runtime = _runtime()
    from models.promotion import ApprovalError, AuditTrail, approve, reject

    from features.clock import iso_week

    if model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})", EXIT_REFUSED)
    now = datetime.now(UTC)
    audit = AuditTrail(runtime.store, runtime.registry, now)
    try:
        (approve if kind == "approve" else reject)(model, version, by, reason, runtime.registry, audit, week=iso_week(now))
    except ApprovalError as exc:
        _fail(f"refused: {exc}", EXIT_REFUSED)
    console.print(f"{model} version {version}: {kind}d by {by}")
    if os.environ.get("PREFECT_API_URL"):  # only a Prefect server has approval runs waiting on a form
        from flows.approval import close_open_requests

        try:
            closed = close_open_requests(model, version, kind, by, reason)
        except Exception as exc:  # noqa: BLE001 - the decision is recorded; an open form only waits for its time-out
            console.print(f"[yellow]note:[/yellow] could not close the approval form in Prefect: {exc}")
        else:
            if closed:
                console.print(f"closed {closed} approval request(s) waiting in the Prefect UI")


@app.command("approve")
def approve_cmd(model: str, version: str,
                by: Annotated[str, typer.Option("--by", help="Who approves (recorded in the audit table).")],
                reason: Annotated[str, typer.Option(help="Why.")] = "") -> None:
    """Approve a version waiting for approval: it becomes champion (exit 5 if it does not exist or does not wait)."""
    _decision_command("approve", model, version, by, reason)


@app.command("reject")
def reject_cmd(model: str, version: str,
               by: Annotated[str, typer.Option("--by", help="Who rejects (recorded in the audit table).")],
               reason: Annotated[str, typer.Option(help="Why.")] = "") -> None:
    """Reject a version waiting for approval: the champion stays (exit 5 if it does not exist or does not wait)."""
    _decision_command("reject", model, version, by, reason)


@app.command("rollback")
def rollback_cmd(model: str, by: Annotated[str, typer.Option("--by", help="Who rolls back.")] = "operator",
                 reason: Annotated[str, typer.Option(help="Why.")] = "") -> None:
    """Restore the champion that the current one replaced (exit 5 if there is none to restore)."""
    runtime = _runtime()
    from models.promotion import ApprovalError, AuditTrail, rollback

    from features.clock import iso_week

    if model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})", EXIT_REFUSED)
    now = datetime.now(UTC)
    try:
        restored = rollback(model, by, reason, runtime.registry, AuditTrail(runtime.store, runtime.registry, now), week=iso_week(now))
    except ApprovalError as exc:
        _fail(f"refused: {exc}", EXIT_REFUSED)
    if os.environ.get("PREFECT_API_URL"):  # without a Prefect server there is no automation to alert anyone
        from flows.alerts import emit

        emit("loop.model.rolled_back", model, {"restored": restored, "by": by, "reason": reason})
    console.print(f"{model}: champion is version {restored} again")


@app.command("safe-mode")
def safe_mode_cmd(model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
                  history: Annotated[bool, typer.Option("--history", help="Every event, not only the segments held now.")] = False,
                  as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the segments held in safe mode (they take the safe decision until `loop clear`)."""
    import polars as pl

    runtime = _runtime()
    from features.safe_mode import active
    from features.safe_mode import history as events

    if model is not None and model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})")
    rows = events(runtime.store, model) if history else active(runtime.store, model)
    if as_json:
        print(json.dumps(rows.with_columns(pl.col(pl.Datetime).dt.to_string()).to_dicts(), indent=2))
        return
    if rows.is_empty():
        console.print("no segment is in safe mode" if not history else "no safe-mode events")
        return
    shown = rows.select("model", pl.format("{}={}", "column", "value").alias("segment"),
                        *(["event"] if history else []),
                        pl.col("at" if history else "since").dt.strftime("%Y-%m-%d %H:%M").alias("at"), "actor", "reason")
    table = Table(title="safe-mode events" if history else "segments in safe mode")
    for col in shown.columns:
        table.add_column(col, overflow="fold")
    for row in shown.iter_rows():
        table.add_row(*(str(v) for v in row))
    console.print(table)


@app.command("clear")
def clear_cmd(model: Annotated[str, typer.Argument(help="Model name.")],
              segment: Annotated[str, typer.Argument(help="The segment as COLUMN=VALUE, e.g. template_id=ret_v2.")],
              by: Annotated[str, typer.Option("--by", help="Who clears it (recorded in the safe-mode and audit tables).")],
              reason: Annotated[str, typer.Option(help="Why, e.g. what was fixed.")] = "") -> None:
    """Lift safe mode for one segment: its rows follow the policy again (the scoring API within LOOP_API_RELOAD_SECONDS)."""
    runtime = _runtime()
    from features.clock import iso_week
    from features.safe_mode import SafeModeError, clear, parse_segment

    if model not in runtime.specs:
        _fail(f"unknown model '{model}' (known: {', '.join(runtime.specs)})")
    now = datetime.now(UTC)
    try:
        column, value = parse_segment(segment)
        clear(runtime.store, model, column, value, by, reason, now, week=iso_week(now))
    except SafeModeError as exc:
        _fail(str(exc))
    console.print(f"{model}: {column}={value} cleared by {by}; its rows follow the policy again")


@app.command()
def serve() -> None:
    """Serve the deployments: inbox ingest every 15 min, daily monitoring, weekly retraining (Mon 03:00 Berlin),
    approval requests (a paused run with a form in the Prefect UI)."""
    runtime = _runtime()
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[yellow]note:[/yellow] PREFECT_API_URL is not set, so the deployments live on a temporary local API "
                      "that ends with this process and no UI shows them. For a lasting setup run "
                      "`prefect server start --host 127.0.0.1` and export PREFECT_API_URL=http://127.0.0.1:4200/api.")
    webhook = os.environ.get("LOOP_ALERT_WEBHOOK_URL")
    if webhook:
        from flows.alerts import ensure_alert_automations

        console.print(f"alerts: {', '.join(ensure_alert_automations(webhook))}")
    from flows.serve import serve_all
    from flows.triggers import RETRAINING_TRIGGERED

    console.print(f"event-driven retraining: {RETRAINING_TRIGGERED} starts retrain-<model>-weekly "
                  f"(automations loop-retrain-<model>-on-trigger for {', '.join(runtime.specs)})")
    serve_all(list(runtime.specs))


@app.command()
def api(host: Annotated[str, typer.Option(envvar="LOOP_API_HOST",
                                          help="Address to listen on; beyond 127.0.0.1 needs LOOP_API_TOKEN.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(envvar="LOOP_API_PORT", help="Port to listen on.")] = 8000,
        access_log: Annotated[bool, typer.Option(help="Log every request (paths and status only).")] = False) -> None:
    """Serve the scoring API the CRM and the mail system call (decisions, outcomes; docs at /docs)."""
    runtime = _runtime()
    from service.main import UnsafeBinding, build_service, serve_api
    from service.wal import WalError

    try:
        service = build_service(runtime.settings, runtime.specs, runtime.store, runtime.registry)
        console.print(f"scoring API on http://{host}:{port} (OpenAPI docs at /docs), write-ahead log in "
                      f"{service.config.wal_dir}")
        serve_api(service, host, port, access_log)
    except (UnsafeBinding, WalError) as exc:
        _fail(str(exc))


@app.command()
def demo(weeks: Annotated[int, typer.Option(help="Simulated weeks.")] = 16,
         seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 7,
         leads: Annotated[int, typer.Option(help="Leads per week.")] = 2000,
         emails: Annotated[int, typer.Option(help="E-mails per week.")] = 5000,
         fresh: Annotated[bool, typer.Option(help="Start from an empty state folder (deletes $LOOP_HOME).")] = True) -> None:
    """Run the self-optimising loop on simulated weeks and print the week-by-week table."""
    from features.settings import DEMO_PSEUDONYM_KEY

    # The demo's simulated people are not real: it is the one command allowed to use the public demo key.
    os.environ.setdefault("LOOP_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY)
    settings = prepare_environment()
    if fresh and settings.home.exists():
        import shutil

        shutil.rmtree(settings.home)
        settings = prepare_environment()
    from flows.demo import DemoConfig, demo_report, run_demo

    config = DemoConfig(weeks=weeks, seed=seed, leads_per_week=leads, emails_per_week=emails)
    with Progress(console=console) as progress:
        bar = progress.add_task("simulated weeks", total=weeks)

        def on_week(week: int, info: dict) -> None:
            progress.console.print(f"week {week:2d} ({info['week']}): " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "week"))
            progress.advance(bar)

        table = run_demo(config, on_week)
    ok = demo_report(table, config, settings, console)
    if not ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def ui(prefect_port: int = 4200, mlflow_port: int = 5000, evidently_port: int = 8085) -> None:
    """Start the Prefect, MLflow and Evidently UIs on localhost, showing what the loop did (Ctrl-C stops them)."""
    import os
    import subprocess

    settings = prepare_environment()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    procs = [
        # The UI asks the API on 4200 unless told otherwise, whatever port the server got.
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(prefect_port), "--analytics-off"],
                         env=dict(env, PREFECT_UI_API_URL=f"http://127.0.0.1:{prefect_port}/api")),
        subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.mlflow_tracking_uri,
                          "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"], env=env),
        # The drift and KPI dashboards (models/dashboard.py); `python -m evidently` has no __main__, the CLI module has.
        subprocess.Popen([sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(settings.workspace_dir),
                          "--host", "127.0.0.1", "--port", str(evidently_port)], env=env),
    ]
    console.print(f"Prefect UI: http://127.0.0.1:{prefect_port}   MLflow UI: http://127.0.0.1:{mlflow_port}   "
                  f"Evidently dashboards: http://127.0.0.1:{evidently_port}   (Ctrl-C to stop)")
    if evidently_port != 8085 or mlflow_port != 5000:
        console.print("Links in Prefect artifacts use LOOP_MLFLOW_UI_URL / LOOP_EVIDENTLY_UI_URL "
                      f"({settings.mlflow_ui_url}, {settings.evidently_ui_url}).")
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()


def main() -> None:
    try:
        app()
    except Exception as exc:  # a clear message and a reliable exit code, not a traceback, for scripts
        if os.environ.get("LOOP_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
