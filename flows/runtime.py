"""Wiring shared by flows and the CLI: settings, specs, store and registry from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from features.settings import Settings, prepare_environment
from features.spec import ModelSpec, load_specs
from features.store import EventStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    specs: dict[str, ModelSpec]

    @classmethod
    def from_env(cls) -> "Runtime":
        settings = prepare_environment()
        return cls(settings, load_specs(settings.specs_dir))

    @cached_property
    def store(self) -> EventStore:
        return EventStore(self.settings.store_uri, self.specs)

    @cached_property
    def registry(self):
        from models.registry import Registry  # mlflow import is heavy; only commands that need it pay

        return Registry(self.settings)

    def spec(self, model: str) -> ModelSpec:
        if model not in self.specs:
            raise KeyError(f"unknown model '{model}'; specs in {self.settings.specs_dir}: {', '.join(self.specs)}")
        return self.specs[model]
