"""How Python values cross into and out of DuckDB: UTC instants, calendar days, JSON, record rows.

Shared by every table module so each writes values the same way: instants are aware UTC, days are
`datetime.date` (never a datetime), JSON is compact and rejects NaN, and a record dataclass's fields are its
table's columns in order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime
from typing import Any


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_day(value: date | str) -> date:
    if isinstance(value, datetime):
        raise TypeError(f"expected a calendar day, got a datetime {value!r}")
    return value if isinstance(value, date) else date.fromisoformat(value)


def day_window(start: date, end: date) -> tuple[date, date]:
    """An inclusive day window [start, end]; ValueError when it ends before it starts."""
    start, end = to_day(start), to_day(end)
    if end < start:
        raise ValueError(f"day window ends ({end}) before it starts ({start})")
    return start, end


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object) -> str:
    return json.dumps(
        value, default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


_MISSING = object()


def get_field(row: object, name: str, default: object = _MISSING) -> Any:
    """A field of a row given as a mapping or as an object (normalize's dataclasses)."""
    value = row.get(name, default) if isinstance(row, Mapping) else getattr(row, name, default)
    if value is _MISSING:
        raise ValueError(f"row {row!r} has no {name!r}")
    return value


def record_columns(record: type) -> str:
    """The SELECT list of a record dataclass: its fields are its table's columns, in the same order."""
    return ", ".join(f.name for f in fields(record))


def record_values(record: type, row: Sequence[Any]) -> dict[str, Any]:
    """A row selected with `record_columns(record)`, by column name."""
    return dict(zip((f.name for f in fields(record)), row, strict=True))


def record_row(record: Any, json_fields: Sequence[str] = ()) -> list[Any]:
    """A record's values in `record_columns` order, to write as its table's row (`record_values` read back),
    the fields named in `json_fields` as JSON text."""
    return [
        dumps(value) if f.name in json_fields else value
        for f in fields(record)
        for value in (getattr(record, f.name),)
    ]
