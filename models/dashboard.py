"""The Evidently workspace: per model a project whose dashboard shows drift and the weekly KPIs over the weeks.

`loop ui` serves it with `evidently ui`. Each project holds two kinds of snapshots:

- **drift**: the Evidently drift report of each monitor run (the latest weekly window against the
  champion's training window), stamped with the monitor's as-of time;
- **KPIs** (features/kpis.py): per week, the week's figures as a one-row dataset whose `MeanValue`
  per column is the figure itself, so the dashboard plots exactly what MLflow holds, stamped with
  the week's end. Tagged `decisions` (written once the week is over) or `outcomes` (once its
  outcomes are final), the two moments the figures become final.

Project, snapshot and panel ids are derived from their names (uuid5): writing the same week again
replaces its snapshot rather than adding a second point, a rerun finds what is there by file name
without reading every snapshot, and the dashboard file is rewritten only when its definition changed.
Evidently is imported inside the methods (about 3 s).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from features.kpis import DECISION_KPIS, OUTCOME_KPIS, kpi_labels
from features.spec import ModelSpec

_NAMESPACE = uuid.UUID("5d0c1f43-7a55-4a38-9a0e-0f7f3c5b2a61")
DRIFT, KPI = "drift", "kpi"
KINDS = {"decisions": DECISION_KPIS, "outcomes": OUTCOME_KPIS}


def _id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "/".join(parts))


@dataclass(frozen=True)
class WrittenSnapshot:
    project_id: str
    snapshot_id: str
    week: str
    kind: str


def dashboard_model(spec: ModelSpec):
    """Two tabs: the KPIs over the weeks and the drift of each monitor run."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    labels = kpi_labels(spec)

    def kpi(column: str, kind: str) -> PanelMetric:
        return PanelMetric(legend=labels[column], metric="MeanValue", metric_labels={"column": column}, tags=[KPI, kind])

    def drift(column: str, legend: str | None = None) -> PanelMetric:
        return PanelMetric(legend=legend or column, metric="ValueDrift", metric_labels={"column": column}, tags=[DRIFT])

    shares = [kpi("automation_rate", "decisions")] + ([kpi("escalation_rate", "decisions")]
                                                      if spec.kpis.escalation_decision else [])
    tabs = {
        "KPIs": [
            line_plot_panel("Automation per week", shares, "share of the week's actions", size="half"),
            line_plot_panel(labels["positive_outcome_rate"].capitalize(), [kpi("positive_outcome_rate", "outcomes")],
                            f"share of {spec.positive_decision} with a positive outcome within "
                            f"{spec.outcomes.maturity_days} days (shown once final)", size="half"),
            bar_plot_panel("Value per week (EUR)", [kpi("value", "outcomes")],
                           f"the positive decisions by the spec's objective ({spec.objective.kind})", size="half"),
            line_plot_panel("Time from action to outcome", [kpi("median_hours_to_outcome", "outcomes")],
                            "median hours to the first terminal outcome", size="half"),
            bar_plot_panel("Actions per week", [kpi("actions", "decisions")], size="full"),
        ],
        "Drift": [
            line_plot_panel("Share of drifted features", [PanelMetric(
                legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}, tags=[DRIFT])],
                f"last 7 days vs the champion's training window; the trigger counts >= {spec.drift.drift_share}",
                size="half"),
            line_plot_panel("Score and outcome drift", [drift("score", "model score"), drift("outcome", "outcome")],
                            f"distance, threshold {spec.drift.score_threshold}: both windows scored by the champion",
                            size="half"),
            line_plot_panel("Drift per feature", [drift(name) for name in spec.feature_names],
                            f"{spec.drift.method} (numbers) / {spec.drift.categorical_method} (categories), "
                            f"threshold {spec.drift.threshold}", size="full"),
        ],
    }
    panels, tab_models = [], []
    for tab, tab_panels in tabs.items():
        fixed = [p.copy(update={"id": _id(spec.name, "panel", tab, p.title)}) for p in tab_panels]
        panels += fixed
        tab_models.append(DashboardTabModel(id=_id(spec.name, "tab", tab), title=tab, panels=[p.id for p in fixed]))
    return DashboardModel(tabs=tab_models, panels=panels)


class MonitoringWorkspace:
    def __init__(self, path: Path) -> None:
        from evidently.ui.workspace import Workspace

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.workspace = Workspace(str(path))

    @staticmethod
    def project_id(spec: ModelSpec) -> uuid.UUID:
        return _id(spec.name, "project")

    def project(self, spec: ModelSpec) -> uuid.UUID:
        """The model's project, created on first use; its dashboard follows the current definition."""
        from evidently.sdk.models import ProjectModel

        project_id = self.project_id(spec)
        if self.workspace.get_project(project_id) is None:
            self.workspace.add_project(ProjectModel(id=project_id, name=spec.name, description=spec.description))
        wanted = dashboard_model(spec)
        if self.workspace.get_dashboard(project_id) != wanted:
            self.workspace.save_dashboard(project_id, wanted)
        return project_id

    def _exists(self, project_id: uuid.UUID, snapshot_id: uuid.UUID) -> bool:
        return (self.path / str(project_id) / "snapshots" / f"{snapshot_id}.json").exists()

    def _write(self, project_id: uuid.UUID, snapshot_id: uuid.UUID, snapshot) -> None:
        # The workspace's own writer, with an id of ours: add_run() would pick a random one.
        self.workspace.state.write_snapshot(project_id, snapshot_id, snapshot)

    def add_kpis(self, spec: ModelSpec, kpis: pl.DataFrame) -> list[WrittenSnapshot]:
        """A snapshot per week and kind whose figures are final and not yet in the workspace."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import MeanValue

        project_id = self.project(spec)
        written = []
        for kind, columns in KINDS.items():
            ready = kpis.filter(pl.col("outcomes_final")) if kind == "outcomes" else kpis
            for week in ready.iter_rows(named=True):  # a handful of weeks; one report each
                snapshot_id = _id(spec.name, KPI, kind, week["week"])
                present = [c for c in columns if week[c] is not None]
                if not present or self._exists(project_id, snapshot_id):
                    continue
                row = ready.filter(pl.col("week") == week["week"]).select(pl.col(present).cast(pl.Float64))
                data = Dataset.from_pandas(row.to_pandas(), data_definition=DataDefinition(numerical_columns=present))
                report = Report([MeanValue(column=c) for c in present], tags=[KPI, kind],
                                metadata={"model": spec.name, "week": week["week"], "kind": kind})
                snapshot = report.run(data, None, timestamp=week["week_end"], name=f"{spec.name} KPIs {week['week']} ({kind})")
                self._write(project_id, snapshot_id, snapshot.to_snapshot_model())
                written.append(WrittenSnapshot(str(project_id), str(snapshot_id), week["week"], kind))
        return written

    def add_drift(self, spec: ModelSpec, snapshot_json: Path, as_of: datetime, week: str) -> WrittenSnapshot:
        """The monitor's Evidently drift report (saved as JSON by models/drift.py) as the snapshot of ``as_of``."""
        from evidently.core.report import Snapshot

        project_id = self.project(spec)
        snapshot_id = _id(spec.name, DRIFT, as_of.isoformat())
        model = Snapshot.load(str(snapshot_json)).to_snapshot_model().copy(update={
            "timestamp": as_of, "tags": [DRIFT], "name": f"{spec.name} drift {as_of:%Y-%m-%d %H:%M}",
            "metadata": {"model": spec.name, "week": week, "kind": DRIFT, "as_of": as_of.isoformat()}})
        self._write(project_id, snapshot_id, model)
        return WrittenSnapshot(str(project_id), str(snapshot_id), week, DRIFT)

    def snapshots(self, spec: ModelSpec) -> list:
        """Every snapshot of the model's project (SnapshotModel), oldest first: for checks and tests."""
        project_id = self.project_id(spec)
        if self.workspace.get_project(project_id) is None:
            return []
        found = [self.workspace.get_run(project_id, s) for s in self.workspace.list_runs(project_id)]
        return sorted(found, key=lambda s: s.timestamp)


def project_url(base: str, project_id: str) -> str:
    return f"{base}/projects/{project_id}"


def snapshot_url(base: str, project_id: str, snapshot_id: str) -> str:
    return f"{base}/projects/{project_id}/reports/{snapshot_id}"
