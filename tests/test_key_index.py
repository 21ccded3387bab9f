"""The writer's hash index: a hash it does not find must not be stored (else a duplicate would be stored again)."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.store import KeyIndex


def test_the_index_finds_exactly_the_hashes_it_holds_also_after_adds():
    rng = np.random.default_rng(3)
    extremes = np.array([0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max], dtype=np.int64)
    stored = np.concatenate([rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 100_000, dtype=np.int64),
                             extremes, extremes])                                        # repeats too
    index = KeyIndex(pl.Series(stored))
    held = set(stored.tolist())
    for size in (10, 5_000, 5_000, 300, 200_000, 1):
        added = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size, dtype=np.int64)
        index.add(pl.Series(added))
        held |= set(added.tolist())
        # Neighbours of held hashes (one off) and fresh ones must not be found; every held one must.
        probe = np.concatenate([rng.choice(np.array(sorted(held), dtype=np.int64), 20_000),
                                rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 20_000, dtype=np.int64),
                                stored[:1000] + 1, extremes])
        found = index.contains(pl.Series("h", probe)).to_list()
        assert found == [int(h) in held for h in probe.tolist()]
    assert len(index._runs) < 6          # added runs are merged, lookups do not grow with the batches


def test_an_empty_index_finds_nothing():
    index = KeyIndex(pl.Series([], dtype=pl.Int64))
    assert index.contains(pl.Series([1, 2], dtype=pl.Int64)).to_list() == [False, False]
    index.add(pl.Series([2], dtype=pl.Int64))
    assert index.contains(pl.Series([1, 2], dtype=pl.Int64)).to_list() == [False, True]
