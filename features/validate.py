"""Row validation against the contract and the model specs, vectorised in polars.

Every check is a condition on a row and a readable reason. A row with any failed check is
rejected whole, with the reasons of all its failed checks, and kept as received (JSON) for the
quarantine table. Nothing is dropped silently.

All file formats are checked as if every value were text (what a CSV holds): a value's reason
quotes it as ``as_text`` renders it, and a column is parsed from that text. Two things keep this
fast without changing a result:

* a column that already has the type its checks want (Parquet gives typed columns: numbers,
  booleans, time-zone-aware timestamps, strings) is used as it is, never rendered to text and
  parsed back; for these types that round trip is exact, so the typed value is the parsed value
  (and "is not a number" or "has no time zone" cannot happen). Other types (Float32, naive
  timestamps, lists, ...) go through text as before;
* each column is parsed once, every condition is a boolean, and the reason texts are built only
  for the rows that failed a check (usually few), not for every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from features.contract import ACTION_SCHEMA, OUTCOME_SCHEMA, feature_schema
from features.spec import ModelSpec

ROW = "__row"
_TZ_SUFFIX = r"(Z|[+-]\d{2}:?\d{2})$"
_DATED = r"^\s*\d{4}-\d{2}-\d{2}"
_TRUE = ["true", "1", "yes", "t", "y"]
_FALSE = ["false", "0", "no", "f", "n"]
_HELPER = "__v:"           # prefix of the parsed helper columns (names starting with "__" are never content)
_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_EXACT_INT = 2 ** 53       # integers up to this size are exact as Float64, as their text parses
# Timestamps with four-digit years (0001-01-01T00:00:00 to 9999-12-31T23:59:59.999999 UTC) round-trip exactly.
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799


class FileRejected(ValueError):
    """The file as a whole cannot be read as actions or outcomes."""


@dataclass(frozen=True)
class Validated:
    actions: dict[str, pl.DataFrame]   # valid action rows per model (contract + the spec's features + ROW, the row number)
    outcomes: pl.DataFrame             # valid outcome rows (OUTCOME_SCHEMA + model, which may be null)
    rejected: pl.DataFrame             # row_number, reason, raw
    rows_read: int
    duplicates_in_file: int


def _text_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.strftime("%Y-%m-%dT%H:%M:%S%.f").alias(name)
        return col.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00").alias(name)
    if dtype == pl.String:
        return col
    if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
        # Nested values never fit the contract; keep them readable so the rejection shows them.
        return pl.struct(col).struct.json_encode().alias(name)
    return col.cast(pl.String).alias(name)


def as_text(df: pl.DataFrame) -> pl.DataFrame:
    """Render every column as text so all file formats go through the same parsing checks.

    Time-zone-aware timestamps become ISO strings in UTC; naive ones keep no offset, so the
    "timestamp without time zone" check applies to Parquet as it does to CSV.
    """
    return df.select([_text_expr(name, dtype) for name, dtype in df.schema.items()])


# -- parsing text (the reference semantics every format follows) ---------------------------------
# Each takes the column with surrounding whitespace stripped (computed once per column).
def _blank(stripped: pl.Expr) -> pl.Expr:
    return stripped.is_null() | (stripped == "")


def _parse_number(stripped: pl.Expr) -> pl.Expr:
    return stripped.cast(pl.Float64, strict=False)


def _parse_bool(stripped: pl.Expr) -> pl.Expr:
    low = stripped.str.to_lowercase()
    return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False).otherwise(None)


def _parse_time(stripped: pl.Expr) -> pl.Expr:
    """ISO timestamps with an offset, in one explicit format after normalising the variants.

    An explicit format parses every row on its own; with an inferred one polars picks the format
    from the first parsable value, so one naive timestamp at the top of a batch failed them all.
    """
    text = (stripped.str.replace(r"Z$", "+00:00").str.replace(" ", "T")
            .str.replace(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})([+-])", "${1}:00${2}")     # no seconds
            .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}"))                           # +0100 -> +01:00
    return text.str.to_datetime(format=_TIME_FORMAT, strict=False, time_zone="UTC", time_unit="us")


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"
# The form exports write (2026-01-05T10:00:00+01:00, fractions allowed): every normalising step of
# _parse_time leaves it as it is, so it parses as the explicit format directly.
_USUAL_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?[+-]\d{2}:\d{2}$"


def _shortcut(text: pl.Series, usual: pl.Series, fast: dict[str, pl.Series],
              general: dict[str, pl.Expr]) -> dict[str, pl.Series]:
    """Helpers of a text column: ``fast`` where ``usual``, the ``general`` expressions on the other rows only.

    Nulls (blanks of a paired file's outcome columns, often many) all get what the general
    expressions give a null, computed once.
    """
    nulls = text.is_null()
    others = (~usual & ~nulls).arg_true()
    nulls = nulls.arg_true()
    if others.len() + nulls.len() == text.len():
        return dict(text.to_frame().select(**general).to_dict())
    if nulls.len():
        at_null = pl.Series(text.name, [None], pl.String).to_frame().select(**general).row(0, named=True)
        fast = {kind: fast[kind].scatter(nulls, at_null[kind]) for kind in general}
    if others.len():
        rest = text.to_frame().select(pl.all().gather(others)).select(**general)
        fast = {kind: fast[kind].scatter(others, rest.get_column(kind)) for kind in general}
    return fast


def _text_number_helpers(text: pl.Series) -> dict[str, pl.Series]:
    """The blank and number helpers of a text number column, as ``_Columns`` defines them.

    A value that parses as it stands is not blank and is the number its stripped text gives; only
    the others (blanks, padded or bad values) are stripped first.
    """
    number = text.cast(pl.Float64, strict=False)
    stripped = pl.col(text.name).str.strip_chars()
    helpers = _shortcut(text, number.is_not_null(), {"blank": pl.repeat(False, text.len(), eager=True), "number": number},
                        {"blank": _blank(stripped), "number": _parse_number(stripped)})
    return {f"{_HELPER}{kind}:{text.name}": helpers[kind] for kind in ("blank", "number")}


def _text_bool_helpers(text: pl.Series) -> dict[str, pl.Series]:
    """The blank and bool helpers of a text boolean column: ``true`` and ``false`` as they stand, the rest stripped."""
    usual = text.is_in(["true", "false"]).fill_null(False)
    stripped = pl.col(text.name).str.strip_chars()
    helpers = _shortcut(text, usual, {"blank": pl.repeat(False, text.len(), eager=True), "bool": text == "true"},
                        {"blank": _blank(stripped), "bool": _parse_bool(stripped)})
    return {f"{_HELPER}{kind}:{text.name}": helpers[kind] for kind in ("blank", "bool")}


# UTC to the second, what most exports write: a fixed format polars parses at half the cost of %+.
_UTC_SECONDS = "%Y-%m-%dT%H:%M:%S+00:00"


def _usual_time(text: pl.Series) -> pl.Series:
    """Timestamps of values in the usual form: UTC to the second in the fixed format, the others by %+."""
    time = text.str.to_datetime(format=_UTC_SECONDS, strict=False, time_unit="us").dt.replace_time_zone("UTC")
    others = (time.is_null() & text.is_not_null()).arg_true()
    if others.len():
        rest = text.gather(others).str.to_datetime(format="%+", strict=False, time_zone="UTC", time_unit="us")
        time = time.scatter(others, rest)
    return time


def _text_time_helpers(text: pl.Series) -> dict[str, pl.Series]:
    """The blank, time, tz and dated helpers of a text time column, as ``_Columns`` defines them.

    Values in the usual form are parsed by ``_usual_time``: a fixed format for UTC to the second,
    else chrono's ISO 8601 parser (``%+``, which reads them as the explicit format does, at a third
    of the cost of the normalising steps); only the other values, usually none, go the general way.
    The tests compare both on many generated values.
    """
    name = text.name
    usual = text.str.contains(_USUAL_TIME).fill_null(False)
    stripped = pl.col(name).str.strip_chars()
    general = {"blank": _blank(stripped), "time": _parse_time(stripped),
               "tz": stripped.str.contains(_TZ_SUFFIX), "dated": pl.col(name).str.contains(_DATED)}
    fast = {"blank": pl.repeat(False, text.len(), eager=True), "tz": usual.clone(), "dated": usual.clone(),
            "time": _usual_time(text)} if usual.any() else {}
    helpers = _shortcut(text, usual, fast, general)
    return {f"{_HELPER}{kind}:{name}": helpers[kind] for kind in general}


def _text_helpers(work: pl.DataFrame, typed: set[str], roles: dict[str, set[str]]) -> dict[str, pl.Series]:
    """Helpers of the text columns read as times, numbers or booleans, computed the short way where it applies."""
    helpers: dict[str, pl.Series] = {}
    for name in work.columns:
        if name in typed or work.schema[name] != pl.String or len(roles.get(name, ())) != 1:
            continue
        role = next(iter(roles[name]))
        shortcut = {"time": _text_time_helpers, "number": _text_number_helpers, "bool": _text_bool_helpers}.get(role)
        if shortcut:
            helpers.update(shortcut(work.get_column(name)))
    return helpers


# -- columns: typed where the type already fits, text otherwise -----------------------------------
def _roles(specs: dict[str, ModelSpec]) -> dict[str, set[str]]:
    """What the checks read each column as: string, number, bool or time."""
    roles: dict[str, set[str]] = {}
    for name in ("action_id", "model", "model_version", "entity_id", "decision", "outcome"):
        roles.setdefault(name, set()).add("string")
    for name in ("decided_at", "observed_at"):
        roles.setdefault(name, set()).add("time")
    for name in ("score", "threshold", "propensity", "revenue", "share_kept"):
        roles.setdefault(name, set()).add("number")
    kinds = {"numeric": "number", "boolean": "bool", "categorical": "string"}
    for spec in specs.values():
        for feature in spec.features:
            roles.setdefault(feature.name, set()).add(kinds[feature.type])
    return roles


def _fits(dtype: pl.DataType, role: str) -> bool:
    if role == "string":
        return dtype == pl.String
    if role == "number":
        return dtype == pl.Float64 or isinstance(dtype, _INTS)
    if role == "bool":
        return dtype == pl.Boolean
    return isinstance(dtype, pl.Datetime) and dtype.time_zone is not None   # time


def _keeps_content(dtype: pl.DataType) -> bool:
    """Types whose values are equal exactly when their texts are (for the duplicate check)."""
    return dtype in (pl.String, pl.Boolean, pl.Float64) or isinstance(dtype, (*_INTS, pl.Datetime))


def _typed_columns(df: pl.DataFrame, roles: dict[str, set[str]]) -> set[str]:
    """Columns used as they are: their type fits every check that reads them, and every value round-trips."""
    typed = {name for name, dtype in df.schema.items()
             if dtype != pl.String and all(_fits(dtype, r) for r in roles.get(name, ()))
             and (name in roles or _keeps_content(dtype))}
    checks = {}
    for name in typed:
        dtype, col = df.schema[name], pl.col(name)
        if isinstance(dtype, pl.Datetime) and dtype.time_unit != "ns":     # ns cannot leave years 1677-2262
            per_second = 1_000 if dtype.time_unit == "ms" else 1_000_000
            physical = col.to_physical()
            checks[name] = ((physical.min() >= _FIRST_SECOND * per_second)
                            & (physical.max() < (_LAST_SECOND + 1) * per_second))
        elif dtype == pl.Int64:
            checks[name] = (col.min() >= -_EXACT_INT) & (col.max() <= _EXACT_INT)
        elif dtype == pl.UInt64:
            checks[name] = col.max() <= _EXACT_INT
    if checks and df.height:
        fine = df.select([expr.alias(name) for name, expr in checks.items()]).row(0, named=True)
        typed -= {name for name, ok in fine.items() if ok is False}
    return typed


class _Columns:
    """Parsed views of the columns, each computed once as a helper column of the working frame.

    ``first`` holds the stripped text of string columns, which the other helpers read (they are
    computed in a second step); ``precomputed`` holds helpers already computed as series.
    """

    def __init__(self, typed: set[str], precomputed: dict[str, pl.Series] | None = None) -> None:
        self.typed = typed
        self.precomputed = precomputed or {}
        self.first: dict[str, pl.Expr] = {}
        self.helpers: dict[str, pl.Expr | pl.Series] = {}

    def _helper(self, kind: str, name: str, typed: Callable[[], pl.Expr], text: Callable[[], pl.Expr]) -> pl.Expr:
        key = f"{_HELPER}{kind}:{name}"
        if key not in self.helpers:
            if key in self.precomputed:
                self.helpers[key] = self.precomputed[key].alias(key)
            else:
                self.helpers[key] = (typed() if name in self.typed else text()).alias(key)
        return pl.col(key)

    def stripped(self, name: str) -> pl.Expr:
        """A string column without surrounding whitespace."""
        key = f"{_HELPER}strip:{name}"
        self.first.setdefault(key, pl.col(name).str.strip_chars().alias(key))
        return pl.col(key)

    def blank(self, name: str) -> pl.Expr:
        return self._helper("blank", name, lambda: pl.col(name).is_null(), lambda: _blank(self.stripped(name)))

    def number(self, name: str) -> pl.Expr:
        return self._helper("number", name, lambda: pl.col(name).cast(pl.Float64),
                            lambda: _parse_number(self.stripped(name)))

    def boolean(self, name: str) -> pl.Expr:
        return self._helper("bool", name, lambda: pl.col(name), lambda: _parse_bool(self.stripped(name)))

    def time(self, name: str) -> pl.Expr:
        return self._helper("time", name, lambda: pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
                            lambda: _parse_time(self.stripped(name)))

    def has_time_zone(self, name: str) -> pl.Expr:
        return self._helper("tz", name, lambda: pl.col(name).is_not_null(),
                            lambda: self.stripped(name).str.contains(_TZ_SUFFIX))

    def dated(self, name: str) -> pl.Expr:
        return self._helper("dated", name, lambda: pl.col(name).is_not_null(), lambda: pl.col(name).str.contains(_DATED))

    def add_to(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(list(self.first.values())).with_columns(list(self.helpers.values()))


# A check: (the condition that a row fails it, the reason). The reason may quote values: it is
# evaluated on the failing rows only, with every column rendered as text.
Check = tuple[pl.Expr, pl.Expr]


def _time_checks(v: _Columns, name: str, now: datetime, required: bool) -> list[Check]:
    value, blank, parsed = pl.col(name), v.blank(name), v.time(name)
    has_tz, dated = v.has_time_zone(name), v.dated(name)
    checks = [
        (~blank & ~has_tz & dated,
         pl.format("{} '{}' has no time zone (expected e.g. 2026-01-05T10:00:00+01:00)", pl.lit(name), value)),
        (~blank & has_tz & parsed.is_null(), pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        (~blank & ~has_tz & ~dated, pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        (parsed > pl.lit(now).cast(pl.Datetime("us", "UTC")),
         pl.format("{} {} is in the future (now is {})", pl.lit(name), value, pl.lit(now.isoformat()))),
    ]
    if required:
        checks.append((blank, pl.lit(f"{name} is empty")))
    return checks


def _probability_checks(v: _Columns, name: str, required: bool = True) -> list[Check]:
    blank, parsed = v.blank(name), v.number(name)
    checks = [
        (~blank & parsed.is_null(), pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))),
        ((parsed < 0) | (parsed > 1), pl.format("{} {} is outside [0, 1]", pl.lit(name), pl.col(name))),
    ]
    return [(blank, pl.lit(f"{name} is empty")), *checks] if required else checks


# Outcome columns of a paired row: they may differ between repeats of one action (several outcomes).
OUTCOME_COLUMNS = tuple(c for c in OUTCOME_SCHEMA if c != "action_id")

# Decisions logged before exploration existed, or backfilled from history, come from a policy whose
# probabilities nobody knows: an empty propensity says so (stored as null), and off-policy estimates
# leave such rows out instead of pretending they were certain.
OPTIONAL_ACTION_COLUMNS = ("propensity",)


def _feature_checks(v: _Columns, spec: ModelSpec, columns: set[str]) -> list[Check]:
    of_model = pl.col("model") == spec.name
    checks: list[Check] = []
    for feature in spec.features:
        name = feature.name
        if name not in columns:
            checks.append((of_model, pl.lit(f"missing column '{name}' required by model '{spec.name}'")))
            continue
        filled = of_model & ~v.blank(name)
        if feature.type == "numeric":
            checks.append((filled & v.number(name).is_null(),
                           pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))))
        elif feature.type == "boolean":
            checks.append((filled & v.boolean(name).is_null(),
                           pl.format("{} '{}' is not a boolean (true/false)", pl.lit(name), pl.col(name))))
        elif spec.unknown_categories == "reject" and feature.categories:
            checks.append((filled & ~pl.col(name).is_in(list(feature.categories)),
                           pl.format("{} has unknown category '{}' (spec allows {})", pl.lit(name),
                                     pl.col(name), pl.lit(", ".join(feature.categories)))))
    decisions = list(spec.decisions)
    checks.append((of_model & ~v.blank("decision") & ~pl.col("decision").is_in(decisions),
                   pl.format("decision '{}' is not one of {} for {}", pl.col("decision"),
                             pl.lit(", ".join(decisions)), pl.lit(spec.name))))
    return checks


def _outcome_checks(v: _Columns, specs: dict[str, ModelSpec], now: datetime, paired: bool) -> list[Check]:
    every = sorted({value for s in specs.values() for value in s.outcomes.values})
    checks = _time_checks(v, "observed_at", now, required=not paired)
    if not paired:
        checks += [(v.blank("action_id"), pl.lit("action_id is empty")),
                   (v.blank("outcome"), pl.lit("outcome is empty"))]
    else:
        checks += [(v.blank("outcome") != v.blank("observed_at"), pl.lit("outcome and observed_at must be given together")),
                   (v.time("observed_at") < v.time("decided_at"), pl.lit("observed_at is before decided_at"))]
    has_outcome = ~v.blank("outcome")
    known_model = pl.col("model").is_in(list(specs))
    checks.append((has_outcome & ~known_model & ~pl.col("outcome").is_in(every),
                   pl.format("unknown outcome '{}' (known: {})", pl.col("outcome"), pl.lit(", ".join(every)))))
    for spec in specs.values():
        checks.append((has_outcome & (pl.col("model") == spec.name) & ~pl.col("outcome").is_in(list(spec.outcomes.values)),
                       pl.format("outcome '{}' is not one of {} for {}", pl.col("outcome"),
                                 pl.lit(", ".join(spec.outcomes.values)), pl.lit(spec.name))))
    revenue = v.number("revenue")
    checks += [
        (~v.blank("revenue") & revenue.is_null(), pl.format("revenue '{}' is not a number", pl.col("revenue"))),
        (revenue < 0, pl.format("revenue {} is negative", pl.col("revenue"))),
    ]
    return checks + _probability_checks(v, "share_kept", required=False)


def _typed_actions(v: _Columns, spec: ModelSpec) -> list[pl.Expr]:
    exprs = [
        v.stripped("action_id").alias("action_id"), pl.col("model"), v.stripped("model_version").alias("model_version"),
        v.stripped("entity_id").alias("entity_id"), v.time("decided_at").alias("decided_at"),
        v.number("score").alias("score"), v.number("threshold").alias("threshold"),
        v.stripped("decision").alias("decision"), v.number("propensity").alias("propensity"),
    ]
    for feature, dtype in feature_schema(spec).items():
        if dtype == pl.Float64:
            exprs.append(v.number(feature).alias(feature))
        elif dtype == pl.Boolean:
            exprs.append(v.boolean(feature).alias(feature))
        else:
            exprs.append(v.stripped(feature).alias(feature))
    return exprs


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
    roles = _roles(specs)
    typed = _typed_columns(df, roles)
    wanted = (set(ACTION_SCHEMA) | set(OUTCOME_SCHEMA)) if is_actions else (set(OUTCOME_SCHEMA) | {"model"})
    missing_required = [c for c in (ACTION_SCHEMA if is_actions else ["action_id", "observed_at", "outcome"])
                        if c not in columns and c not in OPTIONAL_ACTION_COLUMNS]
    work = df.select([pl.col(n) if n in typed else _text_expr(n, d) for n, d in df.schema.items()]).with_columns(
        [pl.lit(None, pl.String).alias(c) for c in sorted(wanted - columns)]).with_row_index(ROW, offset=first_row_number)

    v = _Columns(typed, _text_helpers(work, typed, roles))
    checks: list[Check] = [(pl.lit(True), pl.lit(f"missing column '{c}'")) for c in missing_required]
    if is_actions:
        checks += [(v.blank(c), pl.lit(f"{c} is empty")) for c in ("action_id", "model_version", "entity_id", "decision")]
        checks.append((~v.blank("model") & ~pl.col("model").is_in(list(specs)),
                       pl.format("unknown model '{}' (known: {})", pl.col("model"), pl.lit(", ".join(specs)))))
        checks.append((v.blank("model"), pl.lit("model is empty")))
        checks += _time_checks(v, "decided_at", now, required=True)
        for name in ("score", "threshold"):
            checks += _probability_checks(v, name)
        checks += _probability_checks(v, "propensity", required=False)
        checks.append((v.number("propensity") == 0, pl.lit("propensity 0 says the decision could not have been taken")))
        for spec in specs.values():
            checks += _feature_checks(v, spec, columns)
        if has_outcomes:
            checks += _outcome_checks(v, specs, now, paired=True)
    else:
        checks += _outcome_checks(v, specs, now, paired=False)
    outputs = {name: _typed_actions(v, spec) for name, spec in specs.items()
               if is_actions and all(f.name in columns for f in spec.features)}
    outcome_exprs = [
        v.stripped("action_id").alias("action_id"), v.time("observed_at").alias("observed_at"),
        v.stripped("outcome").alias("outcome"), v.number("revenue").alias("revenue"),
        v.number("share_kept").alias("share_kept"),
        pl.when(pl.col("model").is_in(list(specs))).then(pl.col("model")).alias("model"),
    ]
    has_outcome = ~v.blank("outcome") if has_outcomes else pl.lit(False)

    # Every condition on every row; reasons only for the rows that failed one. The frame is not
    # copied row-wise: rows are selected by masks, and only the output columns are filtered.
    work = v.add_to(work)
    failed = work.select(pl.any_horizontal([c for c, _ in checks]).fill_null(False)).to_series()
    # rechunk: polars 2.1 panics formatting a filtered string column split in many chunks (batched reads)
    reasons = _reasons(work.filter(failed).rechunk(), checks, typed)
    good = ~failed
    cleared = reasons.filter(pl.col("__reason").is_null())  # a failed check whose reason renders as null: not a rejection
    if cleared.height:
        good = good.scatter(cleared[ROW] - first_row_number, True)
    rejected = [reasons.filter(pl.col("__reason").is_not_null())]

    duplicates = 0
    actions: dict[str, pl.DataFrame] = {}
    if is_actions:
        conflicts, duplicates = _in_file_conflicts(work, good, typed)
        if conflicts.height:
            rejected.append(conflicts)
            good = good.scatter(conflicts[ROW] - first_row_number, False)
        first = (work.select(pl.col("action_id"), pl.col("model"), pl.int_range(pl.len()).alias("__pos")).filter(good)
                 .filter(pl.col("action_id").is_first_distinct()))
        for name in specs:
            positions = first.filter(pl.col("model") == name)["__pos"]
            if positions.len():
                keep = pl.zeros(work.height, pl.Boolean, eager=True).scatter(positions, True)
                # ROW travels with each action, so a later rejection (a conflict with the store) can name its line.
                actions[name] = work.lazy().filter(keep).select(*outputs[name], pl.col(ROW).cast(pl.Int64)).collect()
    outcome_rows = work.lazy().filter(pl.lit(good) & has_outcome) if has_outcomes else work.clear().lazy()
    outcomes = _first_of_each_key(outcome_rows.select(outcome_exprs).collect(), ["action_id", "observed_at", "outcome"])
    rejects = pl.concat(rejected).select(pl.col(ROW).cast(pl.Int64).alias("row_number"), pl.col("__reason").alias("reason"))
    positions = (rejects["row_number"] - first_row_number).cast(pl.UInt64)
    raw = as_text(df.select(pl.all().gather(positions))).select(pl.struct(df.columns).struct.json_encode().alias("raw"))
    rejects = pl.concat([rejects, raw], how="horizontal")
    return Validated(actions, outcomes, rejects.sort("row_number"), df.height, duplicates)


def _first_of_each_key(rows: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """``rows.unique(subset=key, keep="first", maintain_order=True)``; the key starts with action_id.

    Only rows whose action_id repeats can repeat the key, so only those (usually few) are compared:
    hashing every row's whole key cost more than the rest of the validation of outcomes.
    """
    repeats = rows.select(pl.int_range(pl.len()).alias("__pos"), *key).filter(pl.col(key[0]).is_duplicated())
    later = repeats.filter(~pl.struct(key).is_first_distinct()).get_column("__pos")
    return rows.filter(~pl.int_range(pl.len()).is_in(later.implode())) if later.len() else rows


def _reasons(suspects: pl.DataFrame, checks: list[Check], typed: set[str]) -> pl.DataFrame:
    """ROW and the reasons of the rows that failed a check, quoting values as ``as_text`` renders them."""
    texts = suspects.with_columns([_text_expr(n, suspects.schema[n]) for n in typed])
    reason = pl.concat_str([pl.when(c).then(m) for c, m in checks], separator="; ", ignore_nulls=True)
    return texts.select(pl.col(ROW), pl.when(reason != "").then(reason).alias("__reason"))


def _in_file_conflicts(work: pl.DataFrame, good: pl.Series, typed: set[str]) -> tuple[pl.DataFrame, int]:
    """Identical repeats of an action are duplicates (kept once); differing repeats are all rejected.

    Returns the rejected repeats (ROW, reason) and the number of duplicates. Only rows whose
    action_id repeats among the good rows are compared. Content is compared as text: a typed
    column compares by value, the same for the types kept typed except 0.0 and -0.0 (texts "0.0"
    and "-0.0"), told apart by the sign of 1/x.
    """
    ids = work.select(pl.col("action_id"), pl.int_range(pl.len()).alias("__pos")).filter(good)
    repeated = ids.filter(pl.col("action_id").is_duplicated())["__pos"]
    if repeated.is_empty():
        return pl.DataFrame(schema={ROW: work.schema[ROW], "__reason": pl.String}), 0
    rows = work.select(pl.all().gather(repeated)).rechunk()
    content = []
    for c in rows.columns:
        if c.startswith("__") or c in OUTCOME_COLUMNS:
            continue
        content.append(pl.col(c))
        if c in typed and rows.schema[c] == pl.Float64:
            content.append(pl.when(pl.col(c) == 0).then(1.0 / pl.col(c)).alias(f"{c}\0sign"))
    variants = pl.struct(content).hash().n_unique().over("action_id")
    keyed = rows.with_columns(variants.alias("__variants"))
    conflicts = keyed.filter(pl.col("__variants") > 1).select(
        ROW, pl.format("duplicate action_id '{}' with conflicting content in the same file", pl.col("action_id")).alias("__reason"))
    clean = keyed.filter(pl.col("__variants") == 1)
    # A paired file may repeat an action with several outcomes: keep every outcome, count repeats of the action.
    duplicates = clean.height - clean.select(pl.col("action_id").n_unique()).item() if clean.height else 0
    return conflicts, duplicates
