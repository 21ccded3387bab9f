"""One injectable clock for everything that depends on "now".

Stored timestamps are UTC; a week is an ISO week in Europe/Berlin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

BERLIN = ZoneInfo("Europe/Berlin")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class SimulatedClock:
    """A clock the demo and the tests move by hand."""

    current: datetime = field(default_factory=lambda: datetime(2026, 1, 5, tzinfo=UTC))

    def now(self) -> datetime:
        return self.current

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("SimulatedClock needs a timezone-aware datetime")
        self.current = when.astimezone(UTC)


def iso_week(when: datetime) -> str:
    """The ISO week label, e.g. '2026-W03', of a moment as seen in Europe/Berlin."""
    year, week, _ = when.astimezone(BERLIN).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(when: datetime) -> datetime:
    """Monday 00:00 Europe/Berlin of the ISO week containing ``when``, as UTC."""
    local = when.astimezone(BERLIN)
    monday = (local - timedelta(days=local.weekday())).date()
    return datetime(monday.year, monday.month, monday.day, tzinfo=BERLIN).astimezone(UTC)


def resolve_as_of(as_of: datetime | str | None, clock: Clock | None = None) -> datetime:
    """A flow's `as_of` parameter: given (the demo, a backfill) or the clock's now (a scheduled run)."""
    if as_of is None:
        return (clock or SystemClock()).now()
    if isinstance(as_of, str):
        as_of = datetime.fromisoformat(as_of)
    return as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
