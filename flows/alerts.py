"""Alerts: Prefect events from the loop, and automations that send them to a webhook.

The loop emits `loop.drift.detected`, `loop.promotion.awaiting_approval`,
`loop.model.rolled_back` (a person's or the guard's) and `loop.guard.fell_short` (the guard found a
new champion short of its claim but could not roll back on its own); together with failed flow runs these are what needs a person. An
automation per kind sends a notification through a webhook block whose URL comes from
LOOP_ALERT_WEBHOOK_URL (a chat or paging system's incoming webhook). `loop serve` creates them.
"""

from __future__ import annotations

from typing import Any

BLOCK_NAME = "loop-alerts"
ALERTS = {
    "loop.drift.detected": "Drift alarm for {{ event.resource.id }}",
    "loop.promotion.awaiting_approval": "A promotion waits for approval: {{ event.resource.id }}",
    "loop.model.rolled_back": "Rolled back: {{ event.resource.id }}",
    "loop.guard.fell_short": "A new champion fell short of its promotion's claim: {{ event.resource.id }}",
    "prefect.flow-run.Failed": "A loop run failed: {{ event.resource.name }}",
}


def emit(event: str, model: str, payload: dict[str, Any]) -> None:
    """Emit a loop event about one model (no-op without a Prefect API to send it to)."""
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": f"loop.model.{model}", "prefect.resource.name": model},
               payload={k: str(v) for k, v in payload.items()})


def ensure_alert_automations(webhook_url: str) -> list[str]:
    """Create (or replace) the webhook block and one automation per alert; returns the automation names."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger

    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME, url=webhook_url, method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=webhook_url.startswith(("http://127.", "http://localhost")),
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    names = []
    for event, subject in ALERTS.items():
        name = f"loop-alert-{event.replace('.', '-').lower()}"
        try:
            Automation.read(name=name).delete()
        except ValueError:
            pass
        trigger = EventTrigger(expect={event}, match={"prefect.resource.id": "loop.model.*" if event.startswith("loop.")
                                                      else "prefect.flow-run.*"},
                               posture="Reactive", threshold=1)
        body = "{{ event.event }} on {{ event.resource.id }} at {{ event.occurred }}: {{ event.payload }}"
        Automation(name=name, trigger=trigger,
                   actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)]).create()
        names.append(name)
    return names
