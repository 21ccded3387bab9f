"""The simulated CRM and mailbox as clients of the scoring API: they ask for decisions and report outcomes.

One simulated week per call: every lead and e-mail of the week is sent to ``/v1/{model}/decide``
(columnar batches), and the outcomes the simulator draws for the decisions the service returned
are posted to ``/v1/outcomes``. The simulator's outcome delays (days to weeks) are compressed:
each outcome is reported as observed now, since a live service refuses timestamps in the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import polars as pl

from features.spec import ModelSpec
from simulator.world import World

BATCH = 1000


@dataclass(frozen=True)
class FeedResult:
    model: str
    decisions: int
    positive: int
    outcomes: int
    model_versions: tuple[str, ...]


def feed_week(client: httpx.Client, world: World, spec: ModelSpec, week: int) -> FeedResult:
    """Send one simulated week of ``spec``'s entities through the API; return what happened."""
    population = world.population(spec.name, week)
    answers = []
    for offset in range(0, population.height, BATCH):
        part = population.slice(offset, BATCH)
        body = {"columns": part.select("entity_ref", *spec.feature_names).to_dict(as_series=False)}
        response = client.post(f"/v1/{spec.name}/decide", json=body)
        response.raise_for_status()
        answer = response.json()
        answers.append(pl.DataFrame(answer["columns"]).with_columns(
            model_version=pl.lit(answer["model_version"]),
            decided_at=pl.lit(answer["decided_at"]).str.to_datetime(time_zone="UTC")))
    decided = pl.concat(answers)
    events = world.outcome_events(spec.name, population, decided["decision"], decided["action_id"], decided["decided_at"])
    # The latest event per action, reported now (the service refuses future timestamps).
    latest = events.sort("observed_at").unique("action_id", keep="last").drop("observed_at")
    for offset in range(0, latest.height, BATCH):
        rows = latest.slice(offset, BATCH).with_columns(model=pl.lit(spec.name)).to_dicts()
        client.post("/v1/outcomes", json={"outcomes": [{k: v for k, v in r.items() if v is not None} for r in rows]}
                    ).raise_for_status()
    return FeedResult(spec.name, decided.height, int((decided["decision"] == spec.positive_decision).sum()),
                      latest.height, tuple(decided["model_version"].unique(maintain_order=True).to_list()))
