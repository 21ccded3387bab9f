"""Row validation against the contract and the model specs, vectorised in polars.

Every input is first turned into text columns (whatever the file format), then parsed column by
column; each failed check contributes a readable reason to the row. A row with any reason is
rejected whole and kept, as received, for the quarantine table. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from features.contract import ACTION_SCHEMA, OUTCOME_SCHEMA, feature_schema
from features.spec import ModelSpec

ROW = "__row"
RAW = "__raw"
_TZ_SUFFIX = r"(Z|[+-]\d{2}:?\d{2})$"
_TRUE = ["true", "1", "yes", "t", "y"]
_FALSE = ["false", "0", "no", "f", "n"]


class FileRejected(ValueError):
    """The file as a whole cannot be read as actions or outcomes."""


@dataclass(frozen=True)
class Validated:
    actions: dict[str, pl.DataFrame]   # valid action rows per model (contract + the spec's features)
    outcomes: pl.DataFrame             # valid outcome rows (OUTCOME_SCHEMA + model, which may be null)
    rejected: pl.DataFrame             # row_number, reason, raw
    rows_read: int
    duplicates_in_file: int


def as_text(df: pl.DataFrame) -> pl.DataFrame:
    """Render every column as text so all file formats go through the same parsing checks.

    Time-zone-aware timestamps become ISO strings in UTC; naive ones keep no offset, so the
    "timestamp without time zone" check applies to Parquet as it does to CSV.
    """
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is None:
                exprs.append(col.dt.strftime("%Y-%m-%dT%H:%M:%S%.f").alias(name))
            else:
                exprs.append(col.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00").alias(name))
        elif dtype == pl.String:
            exprs.append(col)
        elif isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            # Nested values never fit the contract; keep them readable so the rejection shows them.
            exprs.append(pl.struct(col).struct.json_encode().alias(name))
        else:
            exprs.append(col.cast(pl.String).alias(name))
    return df.select(exprs)


def _blank(name: str) -> pl.Expr:
    return pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "")


def _parse_number(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)


def _parse_bool(name: str) -> pl.Expr:
    low = pl.col(name).str.strip_chars().str.to_lowercase()
    return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False).otherwise(None)


def _parse_time(name: str) -> pl.Expr:
    text = pl.col(name).str.strip_chars().str.replace(r"Z$", "+00:00").str.replace(" ", "T")
    return text.str.to_datetime(strict=False, time_zone="UTC", time_unit="us")


def _time_checks(name: str, now: datetime, required: bool) -> list[pl.Expr]:
    value = pl.col(name)
    parsed = _parse_time(name)
    has_tz = value.str.strip_chars().str.contains(_TZ_SUFFIX)
    checks = [
        pl.when(~_blank(name) & ~has_tz & value.str.contains(r"^\s*\d{4}-\d{2}-\d{2}"))
        .then(pl.format("{} '{}' has no time zone (expected e.g. 2026-01-05T10:00:00+01:00)", pl.lit(name), value)),
        pl.when(~_blank(name) & has_tz & parsed.is_null())
        .then(pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        pl.when(~_blank(name) & ~has_tz & ~value.str.contains(r"^\s*\d{4}-\d{2}-\d{2}"))
        .then(pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        pl.when(parsed > pl.lit(now).cast(pl.Datetime("us", "UTC")))
        .then(pl.format("{} {} is in the future (now is {})", pl.lit(name), value, pl.lit(now.isoformat()))),
    ]
    if required:
        checks.append(pl.when(_blank(name)).then(pl.lit(f"{name} is empty")))
    return checks


def _probability_checks(name: str) -> list[pl.Expr]:
    parsed = _parse_number(name)
    return [
        pl.when(_blank(name)).then(pl.lit(f"{name} is empty")),
        pl.when(~_blank(name) & parsed.is_null()).then(pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))),
        pl.when((parsed < 0) | (parsed > 1)).then(pl.format("{} {} is outside [0, 1]", pl.lit(name), pl.col(name))),
    ]


def _feature_checks(spec: ModelSpec, columns: set[str]) -> list[pl.Expr]:
    of_model = pl.col("model") == spec.name
    checks: list[pl.Expr] = []
    for feature in spec.features:
        name = feature.name
        if name not in columns:
            checks.append(pl.when(of_model).then(pl.lit(f"missing column '{name}' required by model '{spec.name}'")))
            continue
        filled = of_model & ~_blank(name)
        if feature.type == "numeric":
            checks.append(pl.when(filled & _parse_number(name).is_null())
                          .then(pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))))
        elif feature.type == "boolean":
            checks.append(pl.when(filled & _parse_bool(name).is_null())
                          .then(pl.format("{} '{}' is not a boolean (true/false)", pl.lit(name), pl.col(name))))
        elif spec.unknown_categories == "reject" and feature.categories:
            checks.append(pl.when(filled & ~pl.col(name).is_in(list(feature.categories)))
                          .then(pl.format("{} has unknown category '{}' (spec allows {})", pl.lit(name),
                                          pl.col(name), pl.lit(", ".join(feature.categories)))))
    decisions = list(spec.decisions)
    checks.append(pl.when(of_model & ~_blank("decision") & ~pl.col("decision").is_in(decisions))
                  .then(pl.format("decision '{}' is not one of {} for {}", pl.col("decision"),
                                  pl.lit(", ".join(decisions)), pl.lit(spec.name))))
    return checks


def _outcome_checks(specs: dict[str, ModelSpec], now: datetime, paired: bool) -> list[pl.Expr]:
    every = sorted({v for s in specs.values() for v in s.outcomes.values})
    revenue = _parse_number("revenue")
    checks = _time_checks("observed_at", now, required=not paired)
    if not paired:
        checks += [pl.when(_blank("action_id")).then(pl.lit("action_id is empty")),
                   pl.when(_blank("outcome")).then(pl.lit("outcome is empty"))]
    else:
        checks += [pl.when(_blank("outcome") != _blank("observed_at"))
                   .then(pl.lit("outcome and observed_at must be given together")),
                   pl.when(_parse_time("observed_at") < _parse_time("decided_at"))
                   .then(pl.lit("observed_at is before decided_at"))]
    known_model = pl.col("model").is_in(list(specs))
    checks.append(pl.when(~_blank("outcome") & ~known_model & ~pl.col("outcome").is_in(every))
                  .then(pl.format("unknown outcome '{}' (known: {})", pl.col("outcome"), pl.lit(", ".join(every)))))
    for spec in specs.values():
        checks.append(pl.when(~_blank("outcome") & (pl.col("model") == spec.name)
                              & ~pl.col("outcome").is_in(list(spec.outcomes.values)))
                      .then(pl.format("outcome '{}' is not one of {} for {}", pl.col("outcome"),
                                      pl.lit(", ".join(spec.outcomes.values)), pl.lit(spec.name))))
    checks += [
        pl.when(~_blank("revenue") & revenue.is_null()).then(pl.format("revenue '{}' is not a number", pl.col("revenue"))),
        pl.when(revenue < 0).then(pl.format("revenue {} is negative", pl.col("revenue"))),
    ]
    return checks


def validate_rows(df: pl.DataFrame, specs: dict[str, ModelSpec], now: datetime, first_row_number: int = 1) -> Validated:
    """Split rows read from one file into valid actions per model, valid outcomes and rejects.

    ``first_row_number`` is the file's line (CSV: 2, after the header; JSON Lines: 1) or row number
    of the first row, so a rejected row can be found in its file.
    """
    columns = set(df.columns)
    is_actions = "decided_at" in columns
    has_outcomes = {"outcome", "observed_at"} <= columns
    if not is_actions and not has_outcomes:
        raise FileRejected("neither action columns (decided_at, ...) nor outcome columns (observed_at, outcome) found; "
                           f"columns were: {', '.join(df.columns) or 'none'}")
    text = as_text(df)
    text = text.with_columns(pl.struct(df.columns).struct.json_encode().alias(RAW)).with_row_index(ROW, offset=first_row_number)
    wanted = (set(ACTION_SCHEMA) | {"revenue", "outcome", "observed_at"}) if is_actions else (set(OUTCOME_SCHEMA) | {"model"})
    missing_required = [c for c in (ACTION_SCHEMA if is_actions else ["action_id", "observed_at", "outcome"]) if c not in columns]
    text = text.with_columns([pl.lit(None, pl.String).alias(c) for c in sorted(wanted - columns)])

    checks: list[pl.Expr] = [pl.lit(f"missing column '{c}'") for c in missing_required]
    if is_actions:
        checks += [pl.when(_blank(c)).then(pl.lit(f"{c} is empty")) for c in ("action_id", "model_version", "entity_id", "decision")]
        checks.append(pl.when(~_blank("model") & ~pl.col("model").is_in(list(specs)))
                      .then(pl.format("unknown model '{}' (known: {})", pl.col("model"), pl.lit(", ".join(specs)))))
        checks.append(pl.when(_blank("model")).then(pl.lit("model is empty")))
        checks += _time_checks("decided_at", now, required=True)
        for name in ("score", "threshold", "propensity"):
            checks += _probability_checks(name)
        for spec in specs.values():
            checks += _feature_checks(spec, columns)
        if has_outcomes:
            checks += _outcome_checks(specs, now, paired=True)
    else:
        checks += _outcome_checks(specs, now, paired=False)

    checked = text.with_columns(pl.concat_str(checks, separator="; ", ignore_nulls=True).alias("__reason"))
    checked = checked.with_columns(pl.when(pl.col("__reason") == "").then(None).otherwise(pl.col("__reason")).alias("__reason"))

    rejected = [checked.filter(pl.col("__reason").is_not_null())]
    good = checked.filter(pl.col("__reason").is_null())
    duplicates = 0
    actions: dict[str, pl.DataFrame] = {}
    if is_actions:
        good, conflicts, duplicates = _split_in_file_duplicates(good, specs)
        rejected.append(conflicts)
        unique_actions = good.unique(subset="action_id", keep="first", maintain_order=True)
        for name, spec in specs.items():
            rows = unique_actions.filter(pl.col("model") == name)
            if rows.height:
                actions[name] = _typed_actions(rows, spec)
    outcome_rows = good.filter(~_blank("outcome")) if has_outcomes else good.clear()
    outcomes = outcome_rows.select(
        pl.col("action_id").str.strip_chars(),
        _parse_time("observed_at").alias("observed_at"),
        pl.col("outcome").str.strip_chars(),
        _parse_number("revenue").alias("revenue"),
        pl.when(pl.col("model").is_in(list(specs))).then(pl.col("model")).alias("model"),
    ).unique(subset=["action_id", "observed_at", "outcome"], keep="first", maintain_order=True)
    rejects = pl.concat(rejected).select(pl.col(ROW).cast(pl.Int64).alias("row_number"),
                                         pl.col("__reason").alias("reason"), pl.col(RAW).alias("raw"))
    return Validated(actions, outcomes, rejects.sort("row_number"), df.height, duplicates)


def _typed_actions(rows: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    exprs = [
        pl.col("action_id").str.strip_chars(), pl.col("model"), pl.col("model_version").str.strip_chars(),
        pl.col("entity_id").str.strip_chars(), _parse_time("decided_at").alias("decided_at"),
        _parse_number("score").alias("score"), _parse_number("threshold").alias("threshold"),
        pl.col("decision").str.strip_chars(), _parse_number("propensity").alias("propensity"),
    ]
    for feature, dtype in feature_schema(spec).items():
        if dtype == pl.Float64:
            exprs.append(_parse_number(feature).alias(feature))
        elif dtype == pl.Boolean:
            exprs.append(_parse_bool(feature).alias(feature))
        else:
            exprs.append(pl.col(feature).str.strip_chars().alias(feature))
    return rows.select(exprs)


def _split_in_file_duplicates(good: pl.DataFrame, specs: dict[str, ModelSpec]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Identical repeats of an action are duplicates (kept once); differing repeats are all rejected."""
    content = [c for c in good.columns if not c.startswith("__") and c not in ("outcome", "observed_at", "revenue")]
    keyed = good.with_columns(pl.struct(content).hash().alias("__content"))
    variants = pl.col("__content").n_unique().over("action_id")
    conflicts = keyed.filter(variants > 1).with_columns(
        pl.format("duplicate action_id '{}' with conflicting content in the same file", pl.col("action_id")).alias("__reason"))
    clean = keyed.filter(variants == 1)
    # A paired file may repeat an action with several outcomes: keep every outcome, count repeats of the action.
    duplicates = clean.height - clean.select(pl.col("action_id").n_unique()).item() if clean.height else 0
    return clean.drop("__content"), conflicts.drop("__content"), duplicates
