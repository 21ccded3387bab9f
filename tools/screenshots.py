"""Screenshots of the running UIs for README.md, taken by a real headless browser (`make screenshots`).

Runs the demo first if its state is missing, starts `loop ui` on free loopback ports (so UIs already
running on the default ports are left alone), and saves 1280x800 PNGs under docs/screenshots/:
the Prefect flow runs and a weekly summary artifact, the MLflow KPI history and model registry, and
the Evidently KPI and drift dashboards. Needs Debian's chromium (/usr/bin/chromium) and playwright
in the venv; `make screenshots` installs both (a Playwright browser download does not work here).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
SIZE = {"width": 1280, "height": 800}
CHROMIUM = os.environ.get("LOOP_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google hosts this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{what} did not answer at {url} within {seconds:.0f} s")


def _env() -> dict[str, str]:
    # The worktree's code, whatever the venv's editable install points at.
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def ensure_demo_state(settings) -> None:
    if (settings.demo_dir / "weekly.csv").exists() and any(settings.workspace_dir.glob("*/snapshots")):
        return
    if (settings.home / "store").exists():
        raise SystemExit(f"{settings.home} holds a loop state without the Evidently workspace (from an older "
                         "release): run `make clean demo` first, then `make screenshots`")
    print("no demo state yet: running `loop demo` (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "flows.cli", "demo"], cwd=REPO, env=_env(), check=True)


def _summary_artifact_id(prefect_api: str) -> str:
    """The latest weekly summary in which a drift made a retraining promote a model or ask a person to (else the latest)."""
    reply = httpx.post(f"{prefect_api}/artifacts/filter", timeout=30,
                       json={"artifacts": {"key": {"any_": ["self-optimise-summary"]}}, "sort": "CREATED_DESC", "limit": 200})
    reply.raise_for_status()
    found = reply.json()
    promoted = [a for a in found if any(f"**Retraining (trigger): {event}**" in (a.get("data") or "")
                                        for event in ("promoted", "awaiting_approval"))]
    return (promoted or found)[0]["id"]


def _mlflow_kpi_run(mlflow: str, model: str) -> tuple[str, str]:
    experiment = httpx.get(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": f"{model}/monitoring"},
                           timeout=30).json()["experiment"]["experiment_id"]
    runs = httpx.post(f"{mlflow}/api/2.0/mlflow/runs/search", timeout=30,
                      json={"experiment_ids": [experiment], "filter": "tags.kind = 'kpis'", "max_results": 1}).json()["runs"]
    return experiment, runs[0]["info"]["run_id"]


def _dismiss_mlflow_popups(page) -> None:
    """MLflow 3 opens a 'new registry UI' dialog and its assistant panel on a first visit; close both."""
    page.wait_for_timeout(5000)
    page.keyboard.press("Escape")
    close = page.get_by_role("button", name="Close")
    for i in range(close.count()):
        try:
            close.nth(i).click(timeout=3000)
        except Exception:  # noqa: BLE001 - a popup that is not there is fine
            pass


def _champion_version(mlflow: str, model: str) -> str:
    reply = httpx.get(f"{mlflow}/api/2.0/mlflow/registered-models/alias", params={"name": model, "alias": "champion"},
                      timeout=30)
    reply.raise_for_status()
    return reply.json()["model_version"]["version"]


def shoot(pages: list[tuple[str, str, str | None, str | None]]) -> list[Path]:
    """(file name, url, text to wait for, selector of what to scroll to the top first) -> PNGs."""
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=SIZE, color_scheme="light")
        for name, url, wait_for, scroll_to in pages:
            page.goto(url, wait_until="load", timeout=120_000)
            if name.startswith("mlflow"):
                _dismiss_mlflow_popups(page)
            if wait_for:
                try:
                    page.get_by_text(wait_for, exact=False).first.wait_for(timeout=60_000)
                except PlaywrightTimeout:  # keep the picture: it shows what the page had instead
                    print(f"warning: '{wait_for}' did not appear on {url}", flush=True)
            if scroll_to:  # Evidently 0.7's UI shows the dashboard's tabs one below the other
                page.locator(scroll_to).first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(3000)  # charts animate in
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path))
            # 256 colours are plenty for a UI and make the PNGs a fraction of the size in git.
            Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            saved.append(path)
            print(f"saved {path.relative_to(REPO)} ({path.stat().st_size // 1024} KB) from {url}", flush=True)
        browser.close()
    return saved


def main() -> None:
    sys.path.insert(0, str(REPO))
    from features.settings import prepare_environment
    from features.spec import load_specs
    from models.dashboard import MonitoringWorkspace, project_url

    settings = prepare_environment()
    ensure_demo_state(settings)
    ports = {"prefect": _free_port(), "mlflow": _free_port(), "evidently": _free_port()}
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--prefect-port", str(ports["prefect"]),
                           "--mlflow-port", str(ports["mlflow"]), "--evidently-port", str(ports["evidently"])],
                          cwd=REPO, env=_env(), start_new_session=True)
    prefect, mlflow, evidently = (f"http://127.0.0.1:{ports[k]}" for k in ("prefect", "mlflow", "evidently"))
    try:
        _wait(f"{prefect}/api/health", "the Prefect UI")
        _wait(f"{mlflow}/health", "the MLflow UI")
        _wait(f"{evidently}/api/version", "the Evidently UI")
        specs = load_specs(settings.specs_dir)
        replies = specs["reply_acceptance"]
        summary = _summary_artifact_id(f"{prefect}/api")
        experiment, kpi_run = _mlflow_kpi_run(mlflow, "reply_acceptance")
        dashboard = project_url(evidently, str(MonitoringWorkspace.project_id(replies)))
        lead_dashboard = project_url(evidently, str(MonitoringWorkspace.project_id(specs["lead_scoring"])))
        shoot([
            ("prefect-flow-runs", f"{prefect}/runs", "self-optimise", "text=Flow runs"),
            ("prefect-cycle-summary", f"{prefect}/artifacts/artifact/{summary}", "Self-optimising cycle", None),
            ("prefect-cycle-summary-decision", f"{prefect}/artifacts/artifact/{summary}", "Self-optimising cycle",
             "h2:has-text('reply_acceptance')"),
            ("mlflow-kpis-over-weeks", f"{mlflow}/#/experiments/{experiment}/runs/{kpi_run}/model-metrics", "automation_rate",
             None),
            ("mlflow-registry", f"{mlflow}/#/models/reply_acceptance/versions/{_champion_version(mlflow, 'reply_acceptance')}",
             "Model card", None),
            ("evidently-kpis", dashboard, "Automation per week", None),
            ("evidently-drift", lead_dashboard, "Share of drifted features", "text=Share of drifted features"),
        ])
    finally:
        ui.send_signal(signal.SIGINT)  # `loop ui` stops the three servers it started
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
