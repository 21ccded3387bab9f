"""Reproduce a logged training run: rebuild its training set from the store, retrain, compare."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.spec import ModelSpec
from features.store import EventStore
from features.training_set import time_split
from features.windows import RebuildCheck, rebuild_training_set
from models.registry import Registry
from models.train import TrainedModel, fit_model


@dataclass(frozen=True)
class Reproduction:
    rebuild: RebuildCheck
    trained: TrainedModel
    logged_metrics: dict[str, float]

    def differences(self, tolerance: float = 1e-9) -> dict[str, tuple[float, float]]:
        """Test metrics that differ from the logged run: name -> (logged, reproduced)."""
        out = {}
        for name, value in self.trained.test_metrics.items():
            logged = self.logged_metrics.get(f"test_{name}")
            if logged is not None and np.isfinite(value) and abs(logged - value) > tolerance:
                out[name] = (logged, value)
        return out

    @property
    def identical(self) -> bool:
        return self.rebuild.matches and not self.differences()


def reproduce_run(registry: Registry, store: EventStore, spec: ModelSpec, run_id: str) -> Reproduction:
    """Retrain with the run's as-of data (rebuilt by filtering current tables), spec and seed."""
    run = registry.client.get_run(run_id)
    lineage = registry.mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/lineage.json")
    check = rebuild_training_set(store, spec, lineage)
    trained = fit_model(time_split(check.frame, spec), spec)
    return Reproduction(check, trained, dict(run.data.metrics))
