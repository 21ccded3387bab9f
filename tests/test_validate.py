"""The fast validation gives exactly the results of the text-only validation it replaced.

``validate_rows`` keeps typed columns typed and builds reason texts only for failing rows. The
oracle below is the implementation before that change (commit 397a047, renamed ``_ref_*``, code
unchanged but for the optional outcome column ``share_kept``, added to both later): everything rendered
as text, every check formatted for every row. Randomised frames,
as CSV gives them (all text, with whitespace, blanks, bad values) and as Parquet gives them
(numbers, booleans, time-zone-aware timestamps in several units and zones, nulls, NaN, -0.0, and
types that must still go through text), must come out identical: actions, outcomes, rejected
rows with their reasons and raw JSON, counts.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from features.contract import ACTION_SCHEMA, OUTCOME_SCHEMA, feature_schema
from features.spec import ModelSpec
from features.validate import ROW as ACTION_ROW, FileRejected, Validated, as_text, validate_rows
from tests.helpers import lead_action

NOW = datetime(2026, 2, 1, tzinfo=UTC)
ROW = "__row"
RAW = "__raw"
_TZ_SUFFIX = r"(Z|[+-]\d{2}:?\d{2})$"
_TRUE = ["true", "1", "yes", "t", "y"]
_FALSE = ["false", "0", "no", "f", "n"]


# -- the oracle: validation as it was before the fast path -----------------------------------------
def _ref_as_text(df: pl.DataFrame) -> pl.DataFrame:
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


def _ref_blank(name: str) -> pl.Expr:
    return pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "")


def _ref_parse_number(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)


def _ref_parse_bool(name: str) -> pl.Expr:
    low = pl.col(name).str.strip_chars().str.to_lowercase()
    return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False).otherwise(None)


def _ref_parse_time(name: str) -> pl.Expr:
    # The one intended change from the copied implementation: an explicit format, so a naive
    # timestamp at the top of a batch no longer makes polars reject every row after it.
    text = (pl.col(name).str.strip_chars().str.replace(r"Z$", "+00:00").str.replace(" ", "T")
            .str.replace(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})([+-])", "${1}:00${2}")
            .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}"))
    return text.str.to_datetime(format="%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_zone="UTC", time_unit="us")


def _ref_time_checks(name: str, now: datetime, required: bool) -> list[pl.Expr]:
    value = pl.col(name)
    parsed = _ref_parse_time(name)
    has_tz = value.str.strip_chars().str.contains(_TZ_SUFFIX)
    checks = [
        pl.when(~_ref_blank(name) & ~has_tz & value.str.contains(r"^\s*\d{4}-\d{2}-\d{2}"))
        .then(pl.format("{} '{}' has no time zone (expected e.g. 2026-01-05T10:00:00+01:00)", pl.lit(name), value)),
        pl.when(~_ref_blank(name) & has_tz & parsed.is_null())
        .then(pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        pl.when(~_ref_blank(name) & ~has_tz & ~value.str.contains(r"^\s*\d{4}-\d{2}-\d{2}"))
        .then(pl.format("{} '{}' is not a timestamp", pl.lit(name), value)),
        pl.when(parsed > pl.lit(now).cast(pl.Datetime("us", "UTC")))
        .then(pl.format("{} {} is in the future (now is {})", pl.lit(name), value, pl.lit(now.isoformat()))),
    ]
    if required:
        checks.append(pl.when(_ref_blank(name)).then(pl.lit(f"{name} is empty")))
    return checks


def _ref_probability_checks(name: str, required: bool = True) -> list[pl.Expr]:
    parsed = _ref_parse_number(name)
    checks = [
        pl.when(~_ref_blank(name) & parsed.is_null()).then(pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))),
        pl.when((parsed < 0) | (parsed > 1)).then(pl.format("{} {} is outside [0, 1]", pl.lit(name), pl.col(name))),
    ]
    return [pl.when(_ref_blank(name)).then(pl.lit(f"{name} is empty")), *checks] if required else checks


def _ref_feature_checks(spec: ModelSpec, columns: set[str]) -> list[pl.Expr]:
    of_model = pl.col("model") == spec.name
    checks: list[pl.Expr] = []
    for feature in spec.features:
        name = feature.name
        if name not in columns:
            checks.append(pl.when(of_model).then(pl.lit(f"missing column '{name}' required by model '{spec.name}'")))
            continue
        filled = of_model & ~_ref_blank(name)
        if feature.type == "numeric":
            checks.append(pl.when(filled & _ref_parse_number(name).is_null())
                          .then(pl.format("{} '{}' is not a number", pl.lit(name), pl.col(name))))
        elif feature.type == "boolean":
            checks.append(pl.when(filled & _ref_parse_bool(name).is_null())
                          .then(pl.format("{} '{}' is not a boolean (true/false)", pl.lit(name), pl.col(name))))
        elif spec.unknown_categories == "reject" and feature.categories:
            checks.append(pl.when(filled & ~pl.col(name).is_in(list(feature.categories)))
                          .then(pl.format("{} has unknown category '{}' (spec allows {})", pl.lit(name),
                                          pl.col(name), pl.lit(", ".join(feature.categories)))))
    decisions = list(spec.decisions)
    checks.append(pl.when(of_model & ~_ref_blank("decision") & ~pl.col("decision").is_in(decisions))
                  .then(pl.format("decision '{}' is not one of {} for {}", pl.col("decision"),
                                  pl.lit(", ".join(decisions)), pl.lit(spec.name))))
    return checks


def _ref_outcome_checks(specs: dict[str, ModelSpec], now: datetime, paired: bool) -> list[pl.Expr]:
    every = sorted({v for s in specs.values() for v in s.outcomes.values})
    revenue = _ref_parse_number("revenue")
    checks = _ref_time_checks("observed_at", now, required=not paired)
    if not paired:
        checks += [pl.when(_ref_blank("action_id")).then(pl.lit("action_id is empty")),
                   pl.when(_ref_blank("outcome")).then(pl.lit("outcome is empty"))]
    else:
        checks += [pl.when(_ref_blank("outcome") != _ref_blank("observed_at"))
                   .then(pl.lit("outcome and observed_at must be given together")),
                   pl.when(_ref_parse_time("observed_at") < _ref_parse_time("decided_at"))
                   .then(pl.lit("observed_at is before decided_at"))]
    known_model = pl.col("model").is_in(list(specs))
    checks.append(pl.when(~_ref_blank("outcome") & ~known_model & ~pl.col("outcome").is_in(every))
                  .then(pl.format("unknown outcome '{}' (known: {})", pl.col("outcome"), pl.lit(", ".join(every)))))
    for spec in specs.values():
        checks.append(pl.when(~_ref_blank("outcome") & (pl.col("model") == spec.name)
                              & ~pl.col("outcome").is_in(list(spec.outcomes.values)))
                      .then(pl.format("outcome '{}' is not one of {} for {}", pl.col("outcome"),
                                      pl.lit(", ".join(spec.outcomes.values)), pl.lit(spec.name))))
    checks += [
        pl.when(~_ref_blank("revenue") & revenue.is_null()).then(pl.format("revenue '{}' is not a number", pl.col("revenue"))),
        pl.when(revenue < 0).then(pl.format("revenue {} is negative", pl.col("revenue"))),
    ]
    return checks + _ref_probability_checks("share_kept", required=False)


def _ref_validate_rows(df: pl.DataFrame, specs: dict[str, ModelSpec], now: datetime, first_row_number: int = 1) -> Validated:
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
    text = _ref_as_text(df)
    text = text.with_columns(pl.struct(df.columns).struct.json_encode().alias(RAW)).with_row_index(ROW, offset=first_row_number)
    wanted = (set(ACTION_SCHEMA) | {"revenue", "outcome", "observed_at", "share_kept"}) if is_actions else (set(OUTCOME_SCHEMA) | {"model"})
    missing_required = [c for c in (ACTION_SCHEMA if is_actions else ["action_id", "observed_at", "outcome"])
                        if c not in columns and c != "propensity"]   # no propensity: an unknown logging policy
    text = text.with_columns([pl.lit(None, pl.String).alias(c) for c in sorted(wanted - columns)])

    checks: list[pl.Expr] = [pl.lit(f"missing column '{c}'") for c in missing_required]
    if is_actions:
        checks += [pl.when(_ref_blank(c)).then(pl.lit(f"{c} is empty")) for c in ("action_id", "model_version", "entity_id", "decision")]
        checks.append(pl.when(~_ref_blank("model") & ~pl.col("model").is_in(list(specs)))
                      .then(pl.format("unknown model '{}' (known: {})", pl.col("model"), pl.lit(", ".join(specs)))))
        checks.append(pl.when(_ref_blank("model")).then(pl.lit("model is empty")))
        checks += _ref_time_checks("decided_at", now, required=True)
        for name in ("score", "threshold"):
            checks += _ref_probability_checks(name)
        checks += _ref_probability_checks("propensity", required=False)
        checks.append(pl.when(_ref_parse_number("propensity") == 0)
                      .then(pl.lit("propensity 0 says the decision could not have been taken")))
        for spec in specs.values():
            checks += _ref_feature_checks(spec, columns)
        if has_outcomes:
            checks += _ref_outcome_checks(specs, now, paired=True)
    else:
        checks += _ref_outcome_checks(specs, now, paired=False)

    checked = text.with_columns(pl.concat_str(checks, separator="; ", ignore_nulls=True).alias("__reason"))
    checked = checked.with_columns(pl.when(pl.col("__reason") == "").then(None).otherwise(pl.col("__reason")).alias("__reason"))

    rejected = [checked.filter(pl.col("__reason").is_not_null())]
    good = checked.filter(pl.col("__reason").is_null())
    duplicates = 0
    actions: dict[str, pl.DataFrame] = {}
    if is_actions:
        good, conflicts, duplicates = _ref_split_in_file_duplicates(good, specs)
        rejected.append(conflicts)
        unique_actions = good.unique(subset="action_id", keep="first", maintain_order=True)
        for name, spec in specs.items():
            rows = unique_actions.filter(pl.col("model") == name)
            if rows.height:
                actions[name] = _ref_typed_actions(rows, spec)
    outcome_rows = good.filter(~_ref_blank("outcome")) if has_outcomes else good.clear()
    outcomes = outcome_rows.select(
        pl.col("action_id").str.strip_chars(),
        _ref_parse_time("observed_at").alias("observed_at"),
        pl.col("outcome").str.strip_chars(),
        _ref_parse_number("revenue").alias("revenue"),
        _ref_parse_number("share_kept").alias("share_kept"),
        pl.when(pl.col("model").is_in(list(specs))).then(pl.col("model")).alias("model"),
    ).unique(subset=["action_id", "observed_at", "outcome"], keep="first", maintain_order=True)
    rejects = pl.concat(rejected).select(pl.col(ROW).cast(pl.Int64).alias("row_number"),
                                         pl.col("__reason").alias("reason"), pl.col(RAW).alias("raw"))
    return Validated(actions, outcomes, rejects.sort("row_number"), df.height, duplicates)


def _ref_typed_actions(rows: pl.DataFrame, spec: ModelSpec) -> pl.DataFrame:
    exprs = [
        pl.col("action_id").str.strip_chars(), pl.col("model"), pl.col("model_version").str.strip_chars(),
        pl.col("entity_id").str.strip_chars(), _ref_parse_time("decided_at").alias("decided_at"),
        _ref_parse_number("score").alias("score"), _ref_parse_number("threshold").alias("threshold"),
        pl.col("decision").str.strip_chars(), _ref_parse_number("propensity").alias("propensity"),
    ]
    for feature, dtype in feature_schema(spec).items():
        if dtype == pl.Float64:
            exprs.append(_ref_parse_number(feature).alias(feature))
        elif dtype == pl.Boolean:
            exprs.append(_ref_parse_bool(feature).alias(feature))
        else:
            exprs.append(pl.col(feature).str.strip_chars().alias(feature))
    return rows.select(exprs)


def _ref_split_in_file_duplicates(good: pl.DataFrame, specs: dict[str, ModelSpec]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Identical repeats of an action are duplicates (kept once); differing repeats are all rejected."""
    content = [c for c in good.columns if not c.startswith("__") and c not in ("outcome", "observed_at", "revenue", "share_kept")]
    keyed = good.with_columns(pl.struct(content).hash().alias("__content"))
    variants = pl.col("__content").n_unique().over("action_id")
    conflicts = keyed.filter(variants > 1).with_columns(
        pl.format("duplicate action_id '{}' with conflicting content in the same file", pl.col("action_id")).alias("__reason"))
    clean = keyed.filter(variants == 1)
    # A paired file may repeat an action with several outcomes: keep every outcome, count repeats of the action.
    duplicates = clean.height - clean.select(pl.col("action_id").n_unique()).item() if clean.height else 0
    return clean.drop("__content"), conflicts.drop("__content"), duplicates


# -- random frames --------------------------------------------------------------------------------
TIMES = ["2026-01-06T10:00:00+01:00", "2026-01-06T10:00:00Z", " 2026-01-06 10:00:00+0100 ", "2026-01-06T10:00:00",
         "yesterday", "", None, "2026-03-01T10:00:00+00:00", "2026-01-06T10:00:00.123456+00:00",
         "2026-01-20T09:00:00+01:00", "2026-13-06T10:00:00+01:00", "2026-01-05T10:00:00-0530",
         "2026-01-06T10:00:00 +01:00", "2026-01-06t10:00:00+01:00", "2026-02-30T10:00:00+01:00", "   ",
         "2026-01-06T10:00:00.5-01:00", "2026-01-06T10:00:60+00:00", "2026-01-06T10:00:00+24:00"]
NUMBERS = ["0.4", " 0.5 ", "1.7", "-0.1", "high", "", None, "NaN", "inf", "0", "1", "1e-3", "-0.0", "0.40"]
BOOLEANS = ["true", "TRUE", " yes ", "0", "perhaps", "", None, "f", "N"]
MODELS = ["lead_scoring", "reply_acceptance", "churn", "", None, " lead_scoring"]


def _text_row(rng: random.Random, i: int) -> dict[str, str | None]:
    return {"action_id": rng.choice([f"a{i}", f"a{rng.randint(0, 15)}", "", " a1 ", None]), "model": rng.choice(MODELS),
            "model_version": rng.choice(["rule", "", " 3 ", None]), "entity_id": rng.choice(["lead@x.de", "pid_abc", "", None]),
            "decided_at": rng.choice(TIMES), "score": rng.choice(NUMBERS), "threshold": rng.choice(NUMBERS[:4] + ["0.5"]),
            "decision": rng.choice(["nurture", "propose_meeting", "auto_send", "human_review", "call_now", "", None]),
            "propensity": rng.choice(NUMBERS), "source": rng.choice(["referral", "lead_marketplace", "", None]),
            "industry": "retail", "region": "nord", "company_size": rng.choice(NUMBERS), "pages_visited": rng.choice(["7", "x", ""]),
            "email_opens": "3", "requested_demo": rng.choice(BOOLEANS), "intent": rng.choice(["return", "zzz", None]),
            "language": "de", "customer_tier": "standard", "template_id": "ret_v1", "message_length": rng.choice(NUMBERS),
            "has_attachment": rng.choice(BOOLEANS), "observed_at": rng.choice(TIMES),
            "outcome": rng.choice(["lost", "converted", "accepted", "bogus", "", None]),
            "revenue": rng.choice(["", None, "100", "-5", "abc", " 3100 "]), "share_kept": rng.choice(NUMBERS)}


def _typed_row(rng: random.Random, i: int) -> dict:
    base = datetime(2026, 1, 6, 9, tzinfo=UTC)

    def when():
        pick = rng.random()
        if pick < 0.1:
            return None
        if pick < 0.15:
            return NOW + timedelta(days=3)
        return base + timedelta(days=rng.randint(-3, 20), seconds=rng.randint(0, 86400), microseconds=rng.choice([0, 123456]))

    def number():
        return rng.choice([0.4, 0.5, 1.7, -0.1, None, float("nan"), float("inf"), 0.0, -0.0, 1.0, 0.1 + 0.2])

    return {"action_id": rng.choice([f"a{i}", f"a{rng.randint(0, 15)}", "", None]),
            "model": rng.choice(["lead_scoring", "reply_acceptance", "churn", None]), "model_version": "3",
            "entity_id": rng.choice(["lead@x.de", None]), "decided_at": when(), "score": number(), "threshold": 0.5,
            "decision": rng.choice(["nurture", "propose_meeting", "auto_send", "x"]), "propensity": number(),
            "source": rng.choice(["referral", None]), "industry": "retail", "region": "nord",
            "company_size": rng.choice([120, None, 2 ** 40, -3]), "pages_visited": rng.choice([7.0, None, float("nan")]),
            "email_opens": 3, "requested_demo": rng.choice([True, False, None]), "intent": "return", "language": "de",
            "customer_tier": "standard", "template_id": "ret_v1", "message_length": rng.choice([10, None]),
            "has_attachment": rng.choice([True, None]), "observed_at": when(),
            "outcome": rng.choice(["lost", "accepted", "bogus", None]), "revenue": rng.choice([None, 100.0, -5.0, 0.0, -0.0]),
            "share_kept": number(),
            "extra_f32": rng.choice([1.5, None]), "extra_list": rng.choice([[1, 2], None]),
            "extra_naive": datetime(2026, 1, 1, rng.randint(0, 3))}


def _with_repeats(rng: random.Random, rows: list[dict]) -> list[dict]:
    rows = rows + [dict(rows[rng.randrange(len(rows))]) for _ in range(len(rows) // 5)]
    rng.shuffle(rows)
    return rows


def text_frame(rng: random.Random, n: int) -> pl.DataFrame:
    rows = _with_repeats(rng, [_text_row(rng, i) for i in range(n)])
    return pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})


def typed_frame(rng: random.Random, n: int, unit: str = "us", zone: str = "UTC") -> pl.DataFrame:
    rows = _with_repeats(rng, [_typed_row(rng, i) for i in range(n)])
    frame = pl.DataFrame(rows, schema_overrides={"company_size": pl.Int64, "email_opens": pl.Int32, "message_length": pl.UInt8,
                                                 "extra_f32": pl.Float32, "threshold": pl.Float64})
    return frame.with_columns(pl.col("decided_at", "observed_at").cast(pl.Datetime(unit, "UTC")).dt.convert_time_zone(zone))


def assert_same(frame: pl.DataFrame, specs, first_row: int = 2) -> Validated:
    try:
        expected = _ref_validate_rows(frame.rechunk(), specs, NOW, first_row)
    except FileRejected as exc:
        with pytest.raises(FileRejected) as raised:
            validate_rows(frame, specs, NOW, first_row)
        assert str(raised.value) == str(exc)
        return None
    got = validate_rows(frame, specs, NOW, first_row)
    assert got.actions.keys() == expected.actions.keys()
    for model, rows in expected.actions.items():
        produced = got.actions[model].drop(ACTION_ROW)      # the row number is new: each action now carries its line
        assert produced.schema == rows.schema
        assert produced.equals(rows), model
    assert got.outcomes.schema == expected.outcomes.schema and got.outcomes.equals(expected.outcomes)
    assert got.rejected.schema == expected.rejected.schema
    assert got.rejected.to_dicts() == expected.rejected.to_dicts()
    assert (got.rows_read, got.duplicates_in_file) == (expected.rows_read, expected.duplicates_in_file)
    return got


DROPS = [(), ("pages_visited",), ("observed_at",), ("decided_at",), ("decided_at", "model"),
         ("outcome", "observed_at", "revenue"), ("score",)]


@pytest.mark.parametrize("seed", range(12))
def test_text_frames_give_the_same_results_as_before(specs, seed):
    rng = random.Random(seed)
    for drop in DROPS:
        assert_same(text_frame(rng, rng.randint(1, 40)).drop(drop), specs)


@pytest.mark.parametrize(("unit", "zone"), [("us", "UTC"), ("ms", "Europe/Berlin"), ("ns", "UTC")])
@pytest.mark.parametrize("seed", range(6))
def test_typed_frames_give_the_same_results_as_before(specs, seed, unit, zone):
    rng = random.Random(seed)
    for drop in [(), ("decided_at", "model"), ("requested_demo",)]:
        frame = typed_frame(rng, rng.randint(1, 40), unit, zone).drop(drop)
        assert_same(frame, specs)
        assert_same(as_text(frame), specs)        # the same values as a CSV holds them


def test_types_that_must_go_through_text_give_the_same_results_as_before(specs):
    rng = random.Random(7)
    frame = typed_frame(rng, 30)
    far = pl.Series("decided_at", [rng.choice([253402300800000000 + 10 ** 12, 1_767_690_000_000_000, None])
                                   for _ in range(frame.height)]).cast(pl.Datetime("us", "UTC"))
    variants = [
        frame.with_columns(pl.Series("company_size", [rng.choice([2 ** 60, 5, None]) for _ in range(frame.height)])),
        frame.with_columns(far),                                              # year > 9999: not ISO text
        frame.with_columns(pl.lit(None).alias("revenue"), pl.lit(None).alias("source")),
        frame.with_columns(pl.col("source", "model").cast(pl.Categorical)),
        frame.with_columns(pl.col("score").cast(pl.Float32)),
        frame.with_columns(pl.col("requested_demo").cast(pl.Int8), pl.col("has_attachment").cast(pl.String)),
        frame.with_columns(pl.col("decided_at").dt.replace_time_zone(None)),  # naive: "has no time zone"
        frame.head(0),
        frame.select("action_id", "observed_at", "outcome", "revenue"),
        frame.select("action_id", "observed_at", "outcome", "revenue", "model"),
        frame.select("action_id", "model"),
    ]
    for variant in variants:
        assert_same(variant, specs)


def test_parquet_values_are_quoted_and_kept_as_text(specs):
    frame = pl.DataFrame({"action_id": ["p1", "p2"], "model": "lead_scoring", "model_version": "3", "entity_id": "e",
                          "decided_at": [datetime(2026, 1, 6, 10, tzinfo=UTC)] * 2, "score": [1.7, 0.4], "threshold": 0.5,
                          "decision": "nurture", "propensity": 1.0, "source": "referral", "industry": "retail",
                          "region": "nord", "company_size": [120, 80], "pages_visited": 7, "email_opens": 3,
                          "requested_demo": True})
    got = assert_same(frame, specs, first_row=1)
    assert got.rejected["reason"].to_list() == ["score 1.7 is outside [0, 1]"]
    assert '"score":"1.7"' in got.rejected["raw"][0] and '"company_size":"120"' in got.rejected["raw"][0]
    assert got.actions["lead_scoring"]["company_size"].to_list() == [80.0]


def test_a_batch_split_in_many_chunks_is_validated(specs):
    """Batched reads give columns in many chunks. Formatting reasons on such a frame filtered down to a few
    rows (some chunks left empty) panics in polars 2.1 ("assertion failed: i < self.len()"; the oracle does
    too, hence it gets the frame rechunked), so the failing rows are rechunked first."""
    def chunk(i: int) -> pl.DataFrame:
        rows = [lead_action(f"c{i}-{j}") for j in range(200)]
        if i % 3 == 0:
            rows[7]["score"] = "1.7"
            rows[9] = dict(rows[8], score="0.9")     # a conflicting repeat within the file
        return pl.DataFrame(rows)

    frame = pl.concat([chunk(i) for i in range(10)], rechunk=False)
    assert frame.n_chunks() == 10
    got = assert_same(frame, specs)
    assert got.rejected.height == 4 * 3


def test_share_kept_is_optional_and_outside_0_1_is_quarantined(specs):
    rows = pl.DataFrame({"action_id": ["e1", "e2", "e3", "e4", "e5"], "observed_at": "2026-01-20T09:00:00+01:00",
                         "outcome": "edited", "model": "reply_acceptance",
                         "share_kept": ["0.8", "", "1.3", "most", "-0.1"]})
    got = assert_same(rows, specs)
    assert got.outcomes["action_id"].to_list() == ["e1", "e2"]
    assert got.outcomes["share_kept"].to_list() == [0.8, None]
    assert got.rejected["reason"].to_list() == ["share_kept 1.3 is outside [0, 1]", "share_kept 'most' is not a number",
                                                "share_kept -0.1 is outside [0, 1]"]
    # Files without the column (every file before graded outcomes) read it as null.
    older = validate_rows(rows.drop("share_kept"), specs, NOW)
    assert older.outcomes["share_kept"].to_list() == [None] * 5 and older.rejected.is_empty()


def test_timestamps_in_the_usual_form_parse_as_the_general_way_would(specs):
    """Text timestamps of the form exports write take a shorter way; it must read every value of that
    form (valid or not: day 31 in February, hour 24, second 60, 1-9 fraction digits, any offset, UTC
    to the second with its own fixed format) as the normalising parser does, and leave other values to it."""
    from features.validate import _parse_time, _text_time_helpers

    rng = random.Random(11)

    def two(top: int) -> str:
        return f"{rng.randint(0, top):02d}"

    values = [f"{rng.randint(1, 9999):04d}-{two(13)}-{two(32)}T{two(25)}:{two(61)}:{two(61)}"
              + rng.choice(["", "." + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(1, 9)))])
              + rng.choice([rng.choice("+-") + f"{two(25)}:{two(61)}", "+00:00", "-00:00"]) for _ in range(20_000)]
    values += [v for v in TIMES if v is not None] + [None]
    text = pl.Series("decided_at", values)
    general = text.to_frame().select(_parse_time(pl.col("decided_at").str.strip_chars())).to_series()
    helpers = _text_time_helpers(text)
    assert helpers["__v:time:decided_at"].equals(general)
    assert general.null_count() > 1000 and general.is_not_null().sum() > 5000      # both kinds are tried
