"""Exactly once per week: the same week started twice at the same time runs once."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from features.store import EventStore
from features.weeks import claim_week, finish_week, week_status

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 3, 2, 2, tzinfo=UTC)

CHILD = """
import sys, time
from datetime import datetime
from pathlib import Path
from features.spec import load_specs
from features.store import EventStore
from features.weeks import claim_week
store = EventStore(sys.argv[1], load_specs(Path(sys.argv[2])))
Path(sys.argv[3] + ".ready." + sys.argv[4]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.002)
claimed, found = claim_week(store, "lead_scoring", "2026-W10", datetime.fromisoformat(sys.argv[5]))
print("claimed" if claimed else f"found {found}")
"""


def test_the_same_week_started_twice_at_once_is_claimed_once(tmp_path):
    store_uri, go = str(tmp_path / "store"), tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, store_uri, str(REPO / "data" / "specs"), str(go), str(i),
                                  NOW.isoformat()], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < 2:
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a child did not start"
        time.sleep(0.01)
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        outputs.append(out.strip())
    assert sorted(outputs) == ["claimed", "found started"]


def test_finished_weeks_are_not_run_again_and_failed_ones_may_be(tmp_path, specs):
    store = EventStore(str(tmp_path / "store"), specs)
    assert claim_week(store, "lead_scoring", "2026-W10", NOW) == (True, None)
    finish_week(store, "lead_scoring", "2026-W10", "awaiting_approval", NOW)
    assert claim_week(store, "lead_scoring", "2026-W10", NOW) == (False, "awaiting_approval")
    assert claim_week(store, "reply_acceptance", "2026-W10", NOW) == (True, None)      # weeks are per model
    finish_week(store, "reply_acceptance", "2026-W10", "failed", NOW, "RuntimeError: boom")
    assert claim_week(store, "reply_acceptance", "2026-W10", NOW) == (True, "failed")
    assert week_status(store, "reply_acceptance", "2026-W10") == "started"
