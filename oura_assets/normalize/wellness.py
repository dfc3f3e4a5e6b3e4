"""The newer daily summaries' headline figures, one set per day, for the daily stats.

`daily_spo2` (average SpO2 %, breathing disturbance index), `daily_stress` (seconds in the high-stress and
high-recovery zones, the day's summary word), `daily_resilience` (level) and `daily_cardiovascular_age`
(vascular age in years). One document per day, as for the other daily summaries: two with different ids for
one day, the one given last wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from oura_assets.normalize.documents import _Doc, _one_per_day

RESILIENCE_LEVELS = ("limited", "adequate", "solid", "strong", "exceptional")
STRESS_SUMMARIES = ("restored", "normal", "stressful")


@dataclass(frozen=True)
class DailyWellness:
    """One day's figures from the newer daily summaries; None where Oura gave none."""

    spo2_average_pct: float | None = None
    breathing_disturbance_index: int | None = None
    stress_high_seconds: int | None = None
    recovery_high_seconds: int | None = None
    stress_day_summary: str | None = None
    resilience_level: str | None = None
    vascular_age_years: int | None = None

    def any(self) -> bool:
        return any(value is not None for value in vars(self).values())


def _choice(d: _Doc, key: str, allowed: tuple[str, ...]) -> str | None:
    value = d.doc.get(key)
    if value is None:
        return None
    if value not in allowed:
        raise d.error(f"field {key!r} should be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def spo2_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    d = _Doc("daily_spo2", doc)
    return {
        "spo2_average_pct": d.number("average", d.object("spo2_percentage")),
        "breathing_disturbance_index": d.integer("breathing_disturbance_index"),
    }


def stress_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    d = _Doc("daily_stress", doc)
    return {
        "stress_high_seconds": d.integer("stress_high"),
        "recovery_high_seconds": d.integer("recovery_high"),
        "stress_day_summary": _choice(d, "day_summary", STRESS_SUMMARIES),
    }


def resilience_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    d = _Doc("daily_resilience", doc)
    return {"resilience_level": _choice(d, "level", RESILIENCE_LEVELS)}


def cardiovascular_age_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    d = _Doc("daily_cardiovascular_age", doc)
    return {"vascular_age_years": d.integer("vascular_age")}


FIGURES = {
    "daily_spo2": spo2_figures,
    "daily_stress": stress_figures,
    "daily_resilience": resilience_figures,
    "daily_cardiovascular_age": cardiovascular_age_figures,
}
"""Each wellness collection's reader: document → its daily-stats columns."""


def daily_wellness(documents: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[date, DailyWellness]:
    """Each day's figures from the wellness collections' documents (by collection), days with any figure."""
    by_day: dict[date, dict[str, Any]] = {}
    for collection, read in FIGURES.items():
        for day, doc in _one_per_day(collection, documents.get(collection, ())).items():
            by_day.setdefault(day, {}).update(read(doc))
    days = {day: DailyWellness(**figures) for day, figures in by_day.items()}
    return {day: figures for day, figures in sorted(days.items()) if figures.any()}
