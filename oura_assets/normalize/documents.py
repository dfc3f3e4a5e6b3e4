"""Reading Oura documents strictly, and the readiness and activity metrics read from them.

`_Doc` is the typed reader every normalizer goes through, so a bad field fails the same way everywhere.
`METRIC_KEYS` is CONTRACT §5's key set per metric type, built from the Oura-field maps kept here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from oura_assets.normalize.errors import NormalizationError
from oura_assets.normalize.timestamps import _parse_aware

READINESS_CONTRIBUTORS = {
    "activityBalance": "activity_balance",
    "bodyTemperature": "body_temperature",
    "hrvBalance": "hrv_balance",
    "previousDayActivity": "previous_day_activity",
    "previousNight": "previous_night",
    "recoveryIndex": "recovery_index",
    "restingHeartRate": "resting_heart_rate",
    "sleepBalance": "sleep_balance",
}
ACTIVITY_FIELDS = {
    "activeCalories": "active_calories",
    "totalCalories": "total_calories",
    "steps": "steps",
    "equivalentWalkingDistance": "equivalent_walking_distance",
    "inactivityAlerts": "inactivity_alerts",
}
ACTIVITY_CONTRIBUTORS = {
    "meetDailyTargets": "meet_daily_targets",
    "moveEveryHour": "move_every_hour",
    "trainingFrequency": "training_frequency",
    "trainingVolume": "training_volume",
}
SLEEP_PERIOD_FIELDS = {
    "totalSleep": "total_sleep_duration",
    "efficiency": "efficiency",
    "latency": "latency",
    "remSleep": "rem_sleep_duration",
    "deepSleep": "deep_sleep_duration",
    "lightSleep": "light_sleep_duration",
    "awake": "awake_time",
}

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "readiness": ("score", "temperatureDeviation", "temperatureTrendDeviation", *READINESS_CONTRIBUTORS),
    "sleep": ("score", "restfulness", "timing", *SLEEP_PERIOD_FIELDS, "bedtimeStart", "bedtimeEnd"),
    "activity": ("score", *ACTIVITY_FIELDS, *ACTIVITY_CONTRIBUTORS),
    "hrv": ("averageHrv", "maxHrv", "minHrv", "restingHeartRate"),
}
"""CONTRACT §5: the exact key set of `wearable_data.metrics` per metric_type."""


class _Doc:
    """Typed reads from one document, with errors that name the collection, the id and the field."""

    def __init__(self, collection: str, doc: object):
        if not isinstance(doc, Mapping):
            raise NormalizationError(
                f"expected a JSON object, got {type(doc).__name__}", collection=collection
            )
        self.collection = collection
        self.doc = doc
        raw_id = doc.get("id")
        self.id = raw_id if isinstance(raw_id, str) and raw_id else None

    def error(self, message: str) -> NormalizationError:
        return NormalizationError(message, collection=self.collection, document_id=self.id)

    def object(self, key: str) -> Mapping[str, Any]:
        """A nested object; missing or null reads as empty (Oura omits optional objects)."""
        value = self.doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"field {key!r} should be an object, got {type(value).__name__}")
        return value

    def number(self, key: str, source: Mapping[str, Any] | None = None, *, integer: bool = False):
        return _number(self, key, (self.doc if source is None else source).get(key), integer=integer)

    def integer(self, key: str, source: Mapping[str, Any] | None = None) -> int | None:
        return self.number(key, source, integer=True)

    def timestamp(self, key: str) -> datetime | None:
        value = self.doc.get(key)
        if value is None:
            return None
        try:
            return _parse_aware(value)
        except ValueError as exc:
            raise self.error(f"field {key!r}: {exc}") from None

    def day(self) -> date:
        if self.id is None:
            raise self.error("missing or empty 'id'")
        value = self.doc.get("day")
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise self.error(
                "missing 'day'" if value is None else f"'day' should be a date string, got {value!r}"
            )
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise self.error(f"'day' is not an ISO date: {value!r}") from None


def _number(doc: _Doc, key: str, value: object, *, integer: bool) -> int | float | None:
    """Oura's numbers, strictly: null stays None, 7.0 for an integer field becomes 7, anything else errs."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise doc.error(f"field {key!r} should be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise doc.error(f"field {key!r} is not a finite number: {value!r}")
        if integer:
            if not value.is_integer():
                raise doc.error(f"field {key!r} should be an integer, got {value!r}")
            return int(value)
    return value


def readiness_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`daily_readiness` → readiness metrics. Contributors are 1-100 scores, not °C or bpm."""
    d = _Doc("daily_readiness", doc)
    contributors = d.object("contributors")
    return {
        "score": d.integer("score"),
        "temperatureDeviation": d.number("temperature_deviation"),
        "temperatureTrendDeviation": d.number("temperature_trend_deviation"),
        **{key: d.integer(src, contributors) for key, src in READINESS_CONTRIBUTORS.items()},
    }


def activity_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`daily_activity` → activity metrics."""
    d = _Doc("daily_activity", doc)
    contributors = d.object("contributors")
    return {
        "score": d.integer("score"),
        **{key: d.integer(src) for key, src in ACTIVITY_FIELDS.items()},
        **{key: d.integer(src, contributors) for key, src in ACTIVITY_CONTRIBUTORS.items()},
    }


def _by_day(collection: str, docs: Iterable[object]) -> dict[date, list[Mapping[str, Any]]]:
    """Documents grouped by `day`, one per `id` (the last one given wins, as when Oura revises a document)."""
    latest: dict[str, tuple[date, Mapping[str, Any]]] = {}
    for raw in docs:
        d = _Doc(collection, raw)
        day = d.day()
        assert d.id is not None  # d.day() insists on an id
        latest.pop(d.id, None)
        latest[d.id] = (day, d.doc)
    grouped: dict[date, list[Mapping[str, Any]]] = {}
    for day, doc in latest.values():
        grouped.setdefault(day, []).append(doc)
    return grouped


def _one_per_day(collection: str, docs: Iterable[object]) -> dict[date, Mapping[str, Any]]:
    # Two daily documents with different ids for one day: the one given last wins, as for a revised id.
    return {day: group[-1] for day, group in _by_day(collection, docs).items()}
