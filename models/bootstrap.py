"""Block bootstrap: resample whole weeks (or whole entities), never single rows.

Rows of one week share campaigns, staff, outages and the policy version that decided them, so
they are not independent; resampling single rows would pretend they are and make intervals too
narrow. A draw picks ``n_blocks`` blocks with replacement; a block drawn twice counts twice. Every
statistic here is then a function of the per-block counts, so all draws are one matrix product.

Which blocks: ISO weeks when the rows span at least ``MIN_WEEKS`` of them (fewer weeks give too
few distinct resamples for a percentile interval), otherwise the entity (lead, message) the row is
about. The choice is returned with the blocks so every report can say which was used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

MIN_WEEKS = 4


@dataclass(frozen=True)
class Blocks:
    index: np.ndarray      # block number of each row, 0..count-1
    count: int
    kind: str              # "week", "entity" or "row"


def choose_blocks(frame: pl.DataFrame, min_weeks: int = MIN_WEEKS) -> Blocks:
    """Weeks if the frame spans at least ``min_weeks`` of them, else entities (else rows, said so)."""
    for column, kind in (("week", "week"), ("entity_id", "entity")):
        if column in frame.columns:
            distinct = frame.get_column(column).n_unique()
            if kind == "entity" or distinct >= min_weeks:
                return _blocks(frame.get_column(column), kind)
    return Blocks(np.arange(frame.height), frame.height, "row")


def _blocks(values: pl.Series, kind: str) -> Blocks:
    codes = values.cast(pl.String).fill_null("").rank("dense").cast(pl.Int64).to_numpy() - 1
    return Blocks(codes, int(codes.max()) + 1 if codes.size else 0, kind)


def block_counts(blocks: Blocks, resamples: int, seed: int) -> np.ndarray:
    """(resamples × blocks) matrix: how often each block was drawn in each resample."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, blocks.count, size=(resamples, blocks.count))
    counts = np.zeros((resamples, blocks.count))
    np.add.at(counts, (np.arange(resamples)[:, None], drawn), 1.0)
    return counts


def block_sums(values: np.ndarray, blocks: Blocks) -> np.ndarray:
    """Sum of ``values`` per block (rows with NaN values must be removed by the caller)."""
    return np.bincount(blocks.index, weights=np.asarray(values, float), minlength=blocks.count)


def percentile_interval(draws: np.ndarray, one_sided_alpha: float) -> tuple[float, float]:
    """[alpha, 1 - alpha] percentiles of the finite draws: each bound is a one-sided test at ``alpha``."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [one_sided_alpha, 1.0 - one_sided_alpha])
    return float(low), float(high)
