"""Crash and concurrency: real processes killed with SIGKILL mid-ingest, and two ingests at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from features.clock import SimulatedClock
from features.ingest import ingest_paths
from features.store import EventStore
from tests.helpers import lead_action

REPO = Path(__file__).resolve().parents[1]
NOW = "2026-02-01T00:00:00+00:00"
KEY = b"test-key"

CHILD = """
import sys
from datetime import datetime
from pathlib import Path
from features.clock import SimulatedClock
from features.ingest import ingest_inbox, ingest_paths
from features.spec import load_specs
from features.store import EventStore
import time
specs_dir, store_uri, mode, target, now = sys.argv[1:6]
store = EventStore(store_uri, load_specs(Path(specs_dir)))
clock = SimulatedClock(datetime.fromisoformat(now))
if len(sys.argv) > 6:  # a start barrier: begin only when the test says go, so two children really overlap
    Path(sys.argv[6] + ".ready." + Path(target).stem).touch()
    while not Path(sys.argv[6]).exists():
        time.sleep(0.005)
if mode == "inbox":
    ingest_inbox(Path(target), store, clock, b"test-key")
else:
    ingest_paths([Path(target)], store, clock, b"test-key")
"""


def _child(store_uri: str, mode: str, target: Path, crash_at: str | None = None, go: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LOOP_CRASH_AT"}
    if crash_at:
        env["LOOP_CRASH_AT"] = crash_at
    args = [sys.executable, "-c", CHILD, str(REPO / "data" / "specs"), store_uri, mode, str(target), NOW]
    return subprocess.Popen(args + ([str(go)] if go else []), env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)


def _paired(prefix: str, n: int, start: int = 0, bad_every: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        row = lead_action(f"{prefix}{i}") | {"observed_at": "2026-01-20T09:00:00+00:00",
                                              "outcome": "converted" if i % 3 == 0 else "lost", "revenue": ""}
        if bad_every and i % bad_every == 0:
            row["score"] = "7"
        rows.append(row)
    return rows


def _view(store: EventStore) -> dict[str, list]:
    """What a reader sees, from one ledger snapshot."""
    complete = store.complete_ingests()
    return {
        "actions": sorted(store.scan_actions("lead_scoring", complete).collect()["action_id"].to_list()),
        "outcomes": sorted(store.scan_outcomes(complete).select(pl.format("{}|{}", "action_id", "outcome"))
                           .collect().to_series().to_list()),
        "quarantine": sorted(store.scan_quarantine(complete).collect()["quarantine_id"].to_list()),
    }


@pytest.fixture
def baseline(tmp_path, specs):
    """A store holding one completed ingest, and a second file that overlaps it and has bad rows."""
    first = tmp_path / "first.csv"
    pl.DataFrame(_paired("a", 30)).write_csv(first)
    second = _paired("a", 10, start=25) + _paired("b", 40, bad_every=7)   # 5 overlapping actions, 6 bad rows
    store_dir = tmp_path / "store"
    ingest_paths([first], EventStore(str(store_dir), specs), SimulatedClock(datetime.fromisoformat(NOW)), KEY)
    # What the store must look like once the second file is in: the same ingest, done without crashing.
    reference = tmp_path / "reference"
    shutil.copytree(store_dir, reference)
    reference_file = tmp_path / "second.csv"
    pl.DataFrame(second).write_csv(reference_file)
    ingest_paths([reference_file], EventStore(str(reference), specs), SimulatedClock(datetime.fromisoformat(NOW)), KEY)
    return store_dir, second, _view(EventStore(str(store_dir), specs)), _view(EventStore(str(reference), specs))


@pytest.mark.parametrize("crash_at", ["started", "actions", "outcomes", "quarantine", "complete"])
def test_a_killed_ingest_leaves_readers_before_or_after_and_a_rerun_finishes_it(tmp_path, specs, baseline, crash_at):
    store_dir, second, before, after = baseline
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pl.DataFrame(second).write_csv(inbox / "second.csv")
    assert before != after

    killed = _child(str(store_dir), "inbox", inbox, crash_at)
    killed.wait(timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read()

    seen = _view(EventStore(str(store_dir), specs))
    # Up to the ledger's "complete" entry readers see the store as before; from it on, as after.
    assert seen == (after if crash_at == "complete" else before)
    assert (inbox / "second.csv").exists(), "the file must stay in the inbox until its ledger entry is written"

    rerun = _child(str(store_dir), "inbox", inbox)
    rerun.wait(timeout=120)
    assert rerun.returncode == 0, rerun.stderr.read()
    assert _view(EventStore(str(store_dir), specs)) == after
    assert (inbox / "processed" / "second.csv").exists()
    # No leftovers of the crashed attempt: every stored row belongs to a completed ingest.
    raw = pl.scan_delta(str(store_dir / "actions" / "lead_scoring")).collect()
    assert raw["action_id"].n_unique() == raw.height == len(after["actions"])


def test_two_processes_ingesting_overlapping_files_at_once_lose_nothing_and_duplicate_nothing(tmp_path, specs):
    left, right = tmp_path / "left.csv", tmp_path / "right.csv"
    pl.DataFrame(_paired("x", 10000)).write_csv(left)
    pl.DataFrame(_paired("x", 10000, start=5000)).write_csv(right)    # half of each file is in the other
    store_dir = tmp_path / "store"
    go = tmp_path / "go"
    children = [_child(str(store_dir), "paths", left, go=go), _child(str(store_dir), "paths", right, go=go)]
    while len(list(tmp_path.glob("go.ready.*"))) < 2:
        assert all(c.poll() is None for c in children), "a child died before the start"
    go.touch()
    for child in children:
        child.wait(timeout=180)
        assert child.returncode == 0, child.stderr.read()

    store = EventStore(str(store_dir), specs)
    view = _view(store)
    assert view["actions"] == sorted(f"x{i}" for i in range(15000))
    assert len(view["outcomes"]) == len(set(view["outcomes"])) == 15000
    raw = pl.scan_delta(str(store_dir / "actions" / "lead_scoring")).collect()
    assert raw.height == raw["action_id"].n_unique() == 15000
    ledger = store.scan_ledger().collect()
    assert sorted(ledger.filter(pl.col("status") == "complete")["source_file"].to_list()) == sorted([str(left), str(right)])
