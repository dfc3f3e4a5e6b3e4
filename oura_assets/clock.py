"""UTC instants: the one rule for turning a datetime into an aware UTC datetime, and "now" as a clock.

Inside the project every instant is an aware datetime in UTC (DuckDB's TIMESTAMPTZ columns, token expiry,
event times). Values arrive from elsewhere in other shapes: Oura's heart-rate timestamps and HTTP dates may
carry no offset, JSON round-trips give back whatever offset was written, and callers pass local times. A
naive datetime here always means UTC, never the machine's local time (which `datetime.astimezone` would
assume).
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime: a naive one is taken to be UTC, an aware one is converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    """The current instant, aware, in UTC: the default wherever a clock is injectable (tests pass theirs)."""
    return datetime.now(UTC)
