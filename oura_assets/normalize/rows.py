"""The rows the warehouse stores: `wearable_data` from the documents, daily stats from those rows.

`patient_wearable_daily_stats` is derived from the `wearable_data` rows built here rather than from the
documents again, so the two tables cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from oura_assets.domain import SOURCE
from oura_assets.normalize.documents import _by_day, _one_per_day, activity_metrics, readiness_metrics
from oura_assets.normalize.heart_rate import HeartRateDayStats, offset_for
from oura_assets.normalize.sleep import hrv_metrics, main_sleep_period, sleep_metrics
from oura_assets.normalize.wellness import DailyWellness


@dataclass(frozen=True)
class WearableRow:
    """One `patient_graph.wearable_data` row (synced_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    metric_type: str
    day: date
    metrics: dict[str, Any]


@dataclass(frozen=True)
class DailyStatsRow:
    """One `patient_graph.patient_wearable_daily_stats` row (updated_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    day: date
    readiness_score: int | None
    sleep_score: int | None
    activity_score: int | None
    total_sleep_seconds: int | None
    steps: int | None
    active_calories: int | None
    total_calories: int | None
    average_hrv: int | None
    resting_heart_rate: int | None
    hr_min: int | float | None
    hr_max: int | float | None
    hr_avg: float | None
    hr_samples: int
    utc_offset_minutes: int
    spo2_average_pct: float | None = None
    breathing_disturbance_index: int | None = None
    stress_high_seconds: int | None = None
    recovery_high_seconds: int | None = None
    stress_day_summary: str | None = None
    resilience_level: str | None = None
    vascular_age_years: int | None = None


def wearable_rows(
    patient_id: str,
    readiness: Iterable[Mapping[str, Any]],
    daily_sleep: Iterable[Mapping[str, Any]],
    sleep_periods: Iterable[Mapping[str, Any]],
    activity: Iterable[Mapping[str, Any]],
) -> list[WearableRow]:
    """One patient's `wearable_data` rows from raw documents spanning any number of days.

    A row exists only where Oura returned its source document(s) — readiness: a `daily_readiness`; sleep:
    a `daily_sleep` or a main sleep period; activity: a `daily_activity`; hrv: a main sleep period — and
    at least one of its metrics is not null (no all-null rows for days the ring was not worn).
    Sorted by (day, metric_type).
    """
    readiness_by_day = _one_per_day("daily_readiness", readiness)
    daily_sleep_by_day = _one_per_day("daily_sleep", daily_sleep)
    activity_by_day = _one_per_day("daily_activity", activity)
    main_by_day = {
        day: main
        for day, periods in _by_day("sleep", sleep_periods).items()
        if (main := main_sleep_period(periods)) is not None
    }

    rows: list[WearableRow] = []

    def add(metric_type: str, day: date, metrics: dict[str, Any]) -> None:
        if any(value is not None for value in metrics.values()):
            rows.append(WearableRow(patient_id, metric_type, day, metrics))

    for day, doc in readiness_by_day.items():
        add("readiness", day, readiness_metrics(doc))
    for day, doc in activity_by_day.items():
        add("activity", day, activity_metrics(doc))
    for day in daily_sleep_by_day.keys() | main_by_day.keys():
        add("sleep", day, sleep_metrics(daily_sleep_by_day.get(day), main_by_day.get(day)))
    for day, main in main_by_day.items():
        add("hrv", day, hrv_metrics(main))
    return sorted(rows, key=lambda row: (row.day, row.metric_type))


def daily_stats_rows(
    patient_id: str,
    wearable_rows: Iterable[WearableRow],
    hr_stats: Mapping[date, HeartRateDayStats],
    offsets: Mapping[date, timedelta],
    wellness: Mapping[date, DailyWellness] | None = None,
) -> list[DailyStatsRow]:
    """One row per day with any wearable row, heart-rate samples or wellness figure.

    Scores, sleep, steps, calories and HRV come from the `wearable_data` rows' metrics (so the two tables
    agree by construction); heart rate from `hr_stats`; SpO2, stress, resilience and vascular age from
    `wellness` (`normalize.wellness.daily_wellness`). A day without samples has hr_samples 0 and null hr_*.
    `utc_offset_minutes` is the offset its local day was cut with. Sorted by day.
    """
    wellness = wellness or {}
    metrics: dict[date, dict[str, dict[str, Any]]] = {}
    for row in wearable_rows:
        if row.patient_id != patient_id:
            raise ValueError(f"wearable row for patient {row.patient_id!r} passed with {patient_id!r}")
        metrics.setdefault(row.day, {})[row.metric_type] = row.metrics
    days = sorted(
        metrics.keys() | {day for day, stats in hr_stats.items() if stats.hr_samples > 0} | wellness.keys()
    )

    out: list[DailyStatsRow] = []
    for day in days:
        by_type = metrics.get(day, {})
        readiness, sleep, activity, hrv = (
            by_type.get(metric_type, {}) for metric_type in ("readiness", "sleep", "activity", "hrv")
        )
        hr = hr_stats.get(day)
        offset = hr.utc_offset if hr is not None else offset_for(day, offsets)
        out.append(
            DailyStatsRow(
                patient_id=patient_id,
                day=day,
                readiness_score=readiness.get("score"),
                sleep_score=sleep.get("score"),
                activity_score=activity.get("score"),
                total_sleep_seconds=sleep.get("totalSleep"),
                steps=activity.get("steps"),
                active_calories=activity.get("activeCalories"),
                total_calories=activity.get("totalCalories"),
                average_hrv=hrv.get("averageHrv"),
                resting_heart_rate=hrv.get("restingHeartRate"),
                hr_min=hr.hr_min if hr else None,
                hr_max=hr.hr_max if hr else None,
                hr_avg=hr.hr_avg if hr else None,
                hr_samples=hr.hr_samples if hr else 0,
                utc_offset_minutes=int(offset.total_seconds() // 60),
                **vars(wellness.get(day, DailyWellness())),
            )
        )
    return out
