"""Small builders of contract rows for tests, and the polling helpers tests of live processes share."""

from __future__ import annotations

import socket
import time

LEAD_FEATURES = {"source": "referral", "industry": "retail", "region": "nord", "company_size": "120",
                 "pages_visited": "7", "email_opens": "3", "requested_demo": "true"}


def lead_action(action_id: str, **overrides: str) -> dict[str, str]:
    row = {"action_id": action_id, "model": "lead_scoring", "model_version": "rule", "entity_id": f"lead-{action_id}@example.de",
           "decided_at": "2026-01-06T10:00:00+01:00", "score": "0.4", "threshold": "0.5", "decision": "nurture",
           "propensity": "1.0", **LEAD_FEATURES}
    row.update(overrides)
    return row


def free_port() -> int:
    """A free TCP port on loopback (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, seconds: float = 60.0, poll: float = 0.25):
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what`` after ``seconds``."""
    import pytest

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll)
    pytest.fail(f"gave up waiting for {what} after {seconds:.0f} s")
