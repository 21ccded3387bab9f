"""Small builders of contract rows for tests."""

from __future__ import annotations

LEAD_FEATURES = {"source": "referral", "industry": "retail", "region": "nord", "company_size": "120",
                 "pages_visited": "7", "email_opens": "3", "requested_demo": "true"}


def lead_action(action_id: str, **overrides: str) -> dict[str, str]:
    row = {"action_id": action_id, "model": "lead_scoring", "model_version": "rule", "entity_id": f"lead-{action_id}@example.de",
           "decided_at": "2026-01-06T10:00:00+01:00", "score": "0.4", "threshold": "0.5", "decision": "nurture",
           "propensity": "1.0", **LEAD_FEATURES}
    row.update(overrides)
    return row
