"""Workouts and sessions: one row per Oura document, its local start and end placed in UTC.

A day can hold several of each (a run and an autodetected walk, a breathing session and a nap Moment), so,
unlike the daily summaries, nothing is picked per day: every document with its own id is a row. A session's
heart rate and HRV come as 5-second series with nulls [spec: `PublicSample`]; the row keeps their mean,
minimum and maximum over the non-null items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from oura_assets.domain import SESSION, SOURCE, WORKOUT
from oura_assets.normalize.documents import _Doc, _number


@dataclass(frozen=True)
class WorkoutRow:
    """One `patient_graph.wearable_workouts` row (synced_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    id: str
    day: date
    start_at: datetime
    end_at: datetime
    duration_seconds: int
    utc_offset_minutes: int | None
    activity: str
    intensity: str | None
    calories_kcal: float | None
    distance_m: float | None
    workout_source: str | None
    label: str | None


@dataclass(frozen=True)
class SessionRow:
    """One `patient_graph.wearable_sessions` row (synced_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    id: str
    day: date
    start_at: datetime
    end_at: datetime
    duration_seconds: int
    utc_offset_minutes: int | None
    session_type: str
    mood: str | None
    hr_avg_bpm: float | None
    hr_min_bpm: float | None
    hr_max_bpm: float | None
    hrv_avg_ms: float | None
    samples: int


def _text(d: _Doc, key: str, *, required: bool = False) -> str | None:
    value = d.doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise d.error(f"field {key!r} should be text, got {value!r}")
    return value


def _span(d: _Doc) -> tuple[datetime, datetime, int, int | None]:
    """(start, end) in UTC, the duration in seconds, and the offset Oura gave on the start."""
    start, end = d.timestamp("start_datetime"), d.timestamp("end_datetime")
    if start is None or end is None:
        raise d.error("missing 'start_datetime' or 'end_datetime'")
    if end < start:
        raise d.error(f"ends before it starts ({d.doc.get('start_datetime')} .. {d.doc.get('end_datetime')})")
    offset = start.utcoffset()
    minutes = None if offset is None else int(offset.total_seconds() // 60)
    return start, end, int((end - start).total_seconds()), minutes


def workout_row(patient_id: str, doc: Mapping[str, Any]) -> WorkoutRow:
    """A `workout` document as a row: activity, intensity, kcal and metres as Oura gave them."""
    d = _Doc(WORKOUT, doc)
    day = d.day()
    start, end, seconds, offset = _span(d)
    assert d.id is not None  # d.day() insists on an id
    return WorkoutRow(
        patient_id=patient_id,
        id=d.id,
        day=day,
        start_at=start,
        end_at=end,
        duration_seconds=seconds,
        utc_offset_minutes=offset,
        activity=_text(d, "activity", required=True) or "",
        intensity=_text(d, "intensity"),
        calories_kcal=d.number("calories"),
        distance_m=d.number("distance"),
        workout_source=_text(d, "source"),
        label=_text(d, "label"),
    )


def _series(d: _Doc, key: str) -> list[float]:
    """The non-null items of a `PublicSample` series (missing or null series: none)."""
    sample = d.object(key)
    items = sample.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise d.error(f"field {key!r}.items should be a list, got {type(items).__name__}")
    values = [_number(d, f"{key}.items", item, integer=False) for item in items]
    return [float(v) for v in values if v is not None]


def session_row(patient_id: str, doc: Mapping[str, Any]) -> SessionRow:
    """A `session` document as a row, its heart-rate and HRV series summarised."""
    d = _Doc(SESSION, doc)
    day = d.day()
    start, end, seconds, offset = _span(d)
    assert d.id is not None
    hr, hrv = _series(d, "heart_rate"), _series(d, "heart_rate_variability")
    return SessionRow(
        patient_id=patient_id,
        id=d.id,
        day=day,
        start_at=start,
        end_at=end,
        duration_seconds=seconds,
        utc_offset_minutes=offset,
        session_type=_text(d, "type", required=True) or "",
        mood=_text(d, "mood"),
        hr_avg_bpm=sum(hr) / len(hr) if hr else None,
        hr_min_bpm=min(hr) if hr else None,
        hr_max_bpm=max(hr) if hr else None,
        hrv_avg_ms=sum(hrv) / len(hrv) if hrv else None,
        samples=len(hr),
    )


def workout_rows(patient_id: str, docs: Iterable[Mapping[str, Any]]) -> list[WorkoutRow]:
    """One row per workout id (the last document given wins), by start."""
    rows = {row.id: row for row in (workout_row(patient_id, doc) for doc in docs)}
    return sorted(rows.values(), key=lambda row: (row.start_at, row.id))


def session_rows(patient_id: str, docs: Iterable[Mapping[str, Any]]) -> list[SessionRow]:
    """One row per session id (the last document given wins), by start."""
    rows = {row.id: row for row in (session_row(patient_id, doc) for doc in docs)}
    return sorted(rows.values(), key=lambda row: (row.start_at, row.id))
