"""MLflow: training runs, the model registry, aliases `champion` / `challenger`, version tags.

A consumer loads ``models:/<model>@champion`` and reads the decision threshold from the same
version (its tag ``threshold`` and the model's metadata), so model and threshold travel together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.kpis import KpiPoint
from features.settings import Settings
from features.spec import ModelSpec
from models.thresholds import SegmentThresholds
from models.train import TrainedModel, sklearn_inputs

CHAMPION, CHALLENGER = "champion", "challenger"
# Given explicitly: inferring requirements costs 4-7 s per logged model.
PIP_REQUIREMENTS = ["scikit-learn==1.9.1", "cloudpickle", "pandas<3.1", "numpy"]


def threshold_tag(threshold: float) -> str:
    """The threshold as a version carries it (and the scoring service decides with it).

    Full precision (``repr`` round-trips a float exactly): the per-segment thresholds are stored
    unrounded, so a rounded tag would make the gates, the model card and the service disagree in
    the last digits about which threshold the version has.
    """
    return repr(float(threshold))


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    estimator: Any
    threshold: float                            # the default threshold (segments without their own)
    run_id: str
    thresholds: SegmentThresholds | None = None   # per segment, registered with the version

    @property
    def segment_thresholds(self) -> SegmentThresholds:
        return self.thresholds if self.thresholds is not None else SegmentThresholds(self.threshold)


def training_as_of(version) -> datetime | None:
    """When the data a version's pipeline learnt from ended: its ``as_of``, or for a recalibrated version the
    ``base_as_of`` of the pipeline it reuses (a recalibration is no retraining: not for the retraining
    schedule, the trigger's pause, nor the drift reference)."""
    stamp = version.tags.get("base_as_of") or version.tags.get("as_of")
    return datetime.fromisoformat(stamp) if stamp else None


class Registry:
    def __init__(self, settings: Settings) -> None:
        import logging

        import mlflow

        # Models are cloudpickled (skops refuses HistGradientBoosting inside CalibratedClassifierCV); they are only
        # ever loaded from this loop's own registry, so the per-model pickle warning is noise in every run's log.
        logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)

        self.settings = settings
        self.mlflow = mlflow
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.mlflow_tracking_uri)
        self.client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)

    # -- experiments and runs ----------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        local = self.settings.mlflow_tracking_uri.startswith("sqlite:")
        location = (self.settings.mlflow_artifact_root / name).as_uri() if local else None
        return self.client.create_experiment(name, artifact_location=location)

    def log_training(self, spec: ModelSpec, trained: TrainedModel, *, lineage: dict[str, Any],
                     input_example: pl.DataFrame, week: str, plots: dict[str, Path], run_name: str,
                     tags: dict[str, str] | None = None) -> tuple[str, str]:
        """Log a training run and register its model; returns (run_id, registered version).

        ``tags`` go to the run and the version (a recalibration's lineage: ``recalibrated_from``, ...)."""
        mlflow = self.mlflow
        from mlflow.models import infer_signature

        example = sklearn_inputs(input_example, spec)
        signature = infer_signature(example, trained.estimator.predict_proba(example))
        with mlflow.start_run(experiment_id=self.experiment_id(f"{spec.name}/training"), run_name=run_name) as run:
            mlflow.set_tags({"model": spec.name, "week": week, "spec_hash": spec.content_hash, "kind": "training",
                             **(tags or {})})
            mlflow.log_params({"spec_hash": spec.content_hash, "threshold": round(trained.threshold.threshold, 6),
                               "objective": spec.objective.kind, **{k: v for k, v in lineage.items() if not isinstance(v, dict)}})
            mlflow.log_metrics({f"test_{k}": v for k, v in trained.test_metrics.items() if np.isfinite(v)})
            mlflow.log_metrics({f"calibration_{k}": v for k, v in trained.calibration_metrics.items() if np.isfinite(v)})
            mlflow.log_metrics({"threshold": trained.threshold.threshold,
                                "objective_value_per_week": trained.threshold.objective_value,
                                "positive_share": trained.threshold.positive_share})
            mlflow.log_text(spec.source_text, "spec.toml")
            mlflow.log_dict(lineage, "lineage.json")
            mlflow.log_text(trained.thresholds.to_json(), "thresholds.json")
            if trained.segments is not None and trained.segments.calibration is not None:
                mlflow.log_dict({"thresholds": trained.segments.table(), "calibration": trained.segments.calibration.table()},
                                "segment_thresholds.json")
            for path in plots.values():
                mlflow.log_artifact(str(path), "plots")
            info = mlflow.sklearn.log_model(
                sk_model=trained.estimator, name="model", signature=signature, input_example=example.head(5),
                pip_requirements=PIP_REQUIREMENTS, serialization_format="cloudpickle",
                pyfunc_predict_fn="predict_proba", registered_model_name=spec.name,
                metadata={"threshold": trained.threshold.threshold, "objective": spec.objective.kind,
                          "spec_hash": spec.content_hash, "thresholds": trained.thresholds.to_json()},
            )
            version = str(info.registered_model_version)
        self.tag_version(spec.name, version, {
            "threshold": threshold_tag(trained.threshold.threshold),
            "objective": spec.objective.kind,
            "objective_value_per_week": f"{trained.threshold.objective_value:.2f}",
            "threshold_reason": trained.threshold.reason,
            "spec_hash": spec.content_hash,
            "week": week,
            "as_of": str(lineage.get("as_of")),
            "test_roc_auc": f"{trained.test_metrics['roc_auc']:.4f}",
            "test_calibration_error": f"{trained.test_metrics['calibration_error']:.4f}",
            "segment_column": trained.thresholds.column,
            "segment_thresholds": trained.thresholds.to_json(),
            **(tags or {}),
        })
        return run.info.run_id, version

    def log_run_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Add figures to a finished run (the promotion evidence is computed after the model is registered)."""
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        finite = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and np.isfinite(float(v))]
        if finite:
            self.client.log_batch(run_id, metrics=finite)

    # -- registry ------------------------------------------------------------------------------
    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model, version, key, str(value))

    def attach_model_card(self, model: str, version: str, run_id: str, card: str) -> None:
        """The card becomes the version's description in the registry UI and an artifact of its run."""
        self.client.update_model_version(model, version, description=card)
        self.client.log_text(run_id, card, "model_card.md")

    def version_by_alias(self, model: str, alias: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model, alias)
        except MlflowException:
            return None

    def get_version(self, model: str, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(model, version)
        except MlflowException:
            return None

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, version)

    def clear_alias(self, model: str, alias: str) -> None:
        if self.version_by_alias(model, alias) is not None:
            self.client.delete_registered_model_alias(model, alias)

    def load(self, model: str, ref: str) -> LoadedModel:
        """Load a version ('3') or alias ('champion') with the threshold registered alongside it."""
        version = self.version_by_alias(model, ref) if not ref.isdigit() else self.get_version(model, ref)
        if version is None:
            raise LookupError(f"model '{model}' has no version or alias '{ref}'")
        estimator = self.mlflow.sklearn.load_model(f"models:/{model}/{version.version}")
        threshold = float(version.tags["threshold"])
        # Versions registered before per-segment thresholds carry only the one threshold.
        stored = version.tags.get("segment_thresholds")
        thresholds = SegmentThresholds.from_json(stored) if stored else SegmentThresholds(threshold)
        return LoadedModel(model, str(version.version), estimator, threshold, version.run_id, thresholds)

    def versions(self, model: str) -> list:
        return sorted(self.client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version))

    def log_monitoring(self, model: str, week: str, metrics: dict[str, float], params: dict[str, Any],
                       artifacts: list[Path], run_name: str) -> str:
        with self.mlflow.start_run(experiment_id=self.experiment_id(f"{model}/monitoring"), run_name=run_name) as run:
            self.mlflow.set_tags({"model": model, "week": week, "kind": "monitoring"})
            self.mlflow.log_params(params)
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))})
            for path in artifacts:
                self.mlflow.log_artifact(str(path), "reports")
        return run.info.run_id

    # -- KPIs over the weeks -------------------------------------------------------------------
    def kpi_run(self, model: str) -> tuple[str, str]:
        """(experiment id, run id) of the model's KPI run, one metric history per KPI; created on first use."""
        experiment = self.experiment_id(f"{model}/monitoring")
        found = self.client.search_runs([experiment], filter_string="tags.kind = 'kpis'",
                                        order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return experiment, found[0].info.run_id
        run = self.client.create_run(experiment, run_name=f"kpis-{model}", tags={"model": model, "kind": "kpis"})
        self.client.set_terminated(run.info.run_id)  # a record, not a job: points are added to it week by week
        return experiment, run.info.run_id

    def logged_steps(self, run_id: str, keys: tuple[str, ...]) -> dict[str, set[int]]:
        return {key: {m.step for m in self.client.get_metric_history(run_id, key)} for key in keys}

    def log_points(self, run_id: str, points: list[KpiPoint]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in points]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
