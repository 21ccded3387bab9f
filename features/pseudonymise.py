"""Keyed pseudonyms for lead and customer identifiers (HMAC-SHA256).

Identifiers are replaced before anything is stored, so no raw id reaches the store, MLflow,
Prefect artifacts or reports. A value that already is a pseudonym (prefix ``pid_``) is kept, so
files exported from a system that pseudonymises upstream pass through unchanged.
"""

from __future__ import annotations

import hashlib
import hmac

import polars as pl

PREFIX = "pid_"


def pseudonym(value: str, key: bytes) -> str:
    return PREFIX + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def pseudonymise(ids: pl.Series, key: bytes) -> pl.Series:
    """Pseudonymise a column of identifiers; each distinct value is hashed once."""
    distinct = ids.drop_nulls().unique()
    raw = distinct.filter(~distinct.str.starts_with(PREFIX))
    mapping = pl.DataFrame(
        {"raw": raw, "pseudo": [pseudonym(v, key) for v in raw.to_list()]},
        schema={"raw": pl.String, "pseudo": pl.String},
    )
    out = (
        ids.to_frame("raw")
        .join(mapping, on="raw", how="left", maintain_order="left")
        .select(pl.coalesce("pseudo", "raw"))
        .to_series()
    )
    return out.rename(ids.name)
