"""The scoring API (FastAPI): the CRM and the mail system ask it for decisions and report outcomes.

* ``POST /v1/{model}/decide``: one or many entities, as a list of objects (``entities``) or as
  one array per column (``columns``, cheaper for big batches); returns score, decision,
  threshold, model version and an ``action_id`` per entity. The action is in the write-ahead
  log before the answer leaves.
* ``POST /v1/outcomes``: what later happened to actions (accepted, converted, ...).
* ``GET /healthz`` (the process answers), ``GET /readyz`` (log replayed, champions loaded, the
  store takes the log), ``GET /v1/models`` (what is served), ``/docs`` and ``/openapi.json``.

Request bodies are typed per model from its spec, so a bad payload gets a 422 whose message
names the field (``columns.company_size``, ``entities.3.industry``). Fields the spec does not
know are refused, so no free text (an e-mail body) can slip into the store.
"""

import hmac
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import orjson
import polars as pl
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from features.contract import feature_schema
from features.spec import ModelSpec
from service.batching import MicroBatcher
from service.scoring import ScoringService

MAX_BATCH = 10_000
_PYTHON_TYPE = {"numeric": float, "boolean": bool, "categorical": str}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Columns(_Strict):
    @model_validator(mode="after")
    def _same_length(self):
        lengths = {name: len(values) for name, values in self}
        if not lengths["entity_ref"]:
            raise ValueError("entity_ref is empty: send at least one entity")
        if len(set(lengths.values())) > 1:
            odd = [f"{name} has {n}" for name, n in lengths.items() if n != lengths["entity_ref"]]
            raise ValueError(f"every column needs one value per entity: entity_ref has {lengths['entity_ref']}, "
                             + ", ".join(odd))
        return self


class _Request(_Strict):
    @model_validator(mode="after")
    def _one_form(self):
        if (self.entities is None) == (self.columns is None):
            raise ValueError("send exactly one of 'entities' (a list of objects) or 'columns' (one array per column)")
        return self


def _value_type(spec: ModelSpec, feature) -> Any:
    if feature.type == "categorical" and spec.unknown_categories == "reject" and feature.categories:
        return Literal[tuple(feature.categories)]
    if feature.type == "numeric":
        return float
    return _PYTHON_TYPE[feature.type]


def request_model(spec: ModelSpec) -> type[BaseModel]:
    """The decide request of one model, typed from its spec (features may be null, never unknown)."""
    camel = "".join(part.title() for part in spec.name.split("_"))
    ref = Field(min_length=1, max_length=512, description=f"the {spec.entity}'s id in your system; pseudonymised before "
                                                          "it is stored")
    row_fields: dict[str, Any] = {"entity_ref": (str, ref)}
    column_fields: dict[str, Any] = {"entity_ref": (list[str], Field(max_length=MAX_BATCH))}
    for feature in spec.features:
        value = _value_type(spec, feature)
        row_fields[feature.name] = (value | None, Field(description=f"{feature.type} feature"))
        column_fields[feature.name] = (list[value | None], Field(max_length=MAX_BATCH))
    entity = create_model(f"{camel}Entity", __base__=_Strict, **row_fields)
    columns = create_model(f"{camel}Columns", __base__=_Columns, **column_fields)
    return create_model(f"{camel}DecideRequest", __base__=_Request,
                        entities=(list[entity] | None, Field(None, min_length=1, max_length=MAX_BATCH)),
                        columns=(columns | None, None))


class Decision(BaseModel):
    action_id: str
    score: float
    decision: str
    propensity: float


class DecisionColumns(BaseModel):
    action_id: list[str]
    score: list[float]
    decision: list[str]
    propensity: list[float]


class DecideResponse(BaseModel):
    model: str
    model_version: str = Field(description="registry version of the champion, or 'rule' before one exists")
    threshold: float
    decided_at: datetime
    decisions: list[Decision] | None = Field(None, description="when the request sent 'entities', in their order")
    columns: DecisionColumns | None = Field(None, description="when the request sent 'columns', in their order")


def outcomes_model(specs: dict[str, ModelSpec]) -> type[BaseModel]:
    known = tuple(sorted({value for spec in specs.values() for value in spec.outcomes.values}))

    class Outcome(_Strict):
        action_id: str = Field(min_length=1, max_length=200)
        outcome: Literal[known]  # type: ignore[valid-type]
        observed_at: AwareDatetime | None = Field(None, description="when it happened, with time zone; default: now")
        revenue: float | None = Field(None, ge=0, allow_inf_nan=False)
        share_kept: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                         description="share of a reviewed draft the person kept when editing it")
        model: Literal[tuple(specs)] | None = Field(None, description="the action's model, if known")  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _fits_model(self):
            if self.model and self.outcome not in specs[self.model].outcomes.values:
                raise ValueError(f"outcome '{self.outcome}' is not one of {', '.join(specs[self.model].outcomes.values)} "
                                 f"for {self.model}")
            return self

    return create_model("OutcomesRequest", __base__=_Strict,
                        outcomes=(list[Outcome], Field(min_length=1, max_length=MAX_BATCH)))


def _message(errors) -> str:
    parts = []
    for error in errors:
        loc = list(error.get("loc", ()))
        location = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] or loc[:1] == ("body",) else loc))
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(parts)


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def create_app(service: ScoringService) -> FastAPI:
    batcher = MicroBatcher(service.decide)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        batcher.start()
        yield
        await batcher.stop()
        service.stop()

    app = FastAPI(title="Feedback loop scoring API", version="1",
                  description=__doc__.split("\n\n")[0], lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"message": _message(errors), "detail": errors})

    def authorised(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        token = service.config.token
        if token and not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        health = service.health
        problems = [p for p in (None if health.started else "starting: replaying the write-ahead log",
                                health.last_flush_error and f"the store does not take the log: {health.last_flush_error}")
                    if p]
        body = {"ready": not problems, "problems": problems, "serving": health.versions,
                "pending_rows": service.wal.pending_rows, "flushed_rows": health.flushed_rows,
                "replayed_rows": health.replayed_rows,
                "last_flush_at": health.last_flush_at.isoformat() if health.last_flush_at else None,
                "champion_check_error": health.last_reload_error}
        return JSONResponse(status_code=200 if not problems else 503, content=body)

    @app.get("/v1/models", tags=["decisions"], dependencies=[Depends(authorised)])
    def models() -> dict:
        return {name: {"model_version": p.version, "threshold": p.threshold,
                       "decisions": [p.spec.positive_decision, p.spec.negative_decision],
                       "safe_mode": p.safe_mode.keys}
                for name, p in service.policies.items()}

    for spec in service.specs.values():
        _add_decide_route(app, batcher, spec, authorised)

    outcomes_request = outcomes_model(service.specs)

    @app.post("/v1/outcomes", tags=["outcomes"], dependencies=[Depends(authorised)])
    def record_outcomes(body: outcomes_request) -> dict:  # type: ignore[valid-type]
        now = service.clock.now()
        rows = [o.model_dump() for o in body.outcomes]
        future = [i for i, row in enumerate(rows) if row["observed_at"] and row["observed_at"] > now]
        if future:
            i = future[0]
            raise RequestValidationError([{"loc": ("body", "outcomes", i, "observed_at"), "type": "value_error",
                                           "msg": f"{rows[i]['observed_at'].isoformat()} is in the future (now is "
                                                  f"{now.isoformat()})"}])
        frame = pl.DataFrame(rows, schema={"action_id": pl.String, "outcome": pl.String,
                                           "observed_at": pl.Datetime("us", "UTC"), "revenue": pl.Float64,
                                           "share_kept": pl.Float64,
                                           "model": pl.String})
        frame = frame.with_columns(pl.col("observed_at").fill_null(pl.lit(now).cast(pl.Datetime("us", "UTC"))))
        return {"recorded": service.record_outcomes(frame)}

    return app


def _add_decide_route(app: FastAPI, batcher: MicroBatcher, spec: ModelSpec, authorised) -> None:
    body_model = request_model(spec)
    schema = {"entity_ref": pl.String, **feature_schema(spec)}

    async def decide(body: body_model) -> Response:  # type: ignore[valid-type]
        if body.columns is not None:
            frame = pl.DataFrame({column: getattr(body.columns, column) for column in schema}, schema=schema)
        else:
            frame = pl.DataFrame([entity.model_dump() for entity in body.entities], schema=schema)
        actions = await batcher.submit(spec.name, frame)
        first = actions.row(0, named=True)
        out = actions.select("action_id", "score", "decision", "propensity")
        payload: dict[str, Any] = {"model": spec.name, "model_version": first["model_version"],
                                   "threshold": first["threshold"], "decided_at": first["decided_at"].isoformat()}
        if body.columns is not None:
            payload["columns"] = out.to_dict(as_series=False)
        else:
            payload["decisions"] = out.to_dicts()
        return _json(payload)

    app.add_api_route(f"/v1/{spec.name}/decide", decide, methods=["POST"], response_model=DecideResponse,
                      tags=["decisions"], dependencies=[Depends(authorised)],
                      summary=f"Decide for one or many {spec.entity}s: {spec.positive_decision} or "
                              f"{spec.negative_decision}", description=spec.description)
