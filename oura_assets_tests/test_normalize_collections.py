"""Table-driven tests of the workout, session and daily-summary normalizers (`normalize.activities`,
`normalize.wellness`) and of `validate_document` on those collections.

Documents follow oura-openapi.json's `PublicWorkout`, `PublicSession`, `PublicDailySpO2`, `PublicDailyStress`,
`DailyResilienceModel` and `PublicDailyCardiovascularAge`. The export carries no `examples` for them, so
the builders fill every documented field with plausible values and each case overrides what it is about.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from oura_assets.normalize import (
    DailyStatsRow,
    DailyWellness,
    NormalizationError,
    daily_stats_rows,
    daily_wellness,
    session_rows,
    validate_document,
    workout_rows,
)
from oura_assets.normalize.activities import session_row, workout_row


def workout_doc(**overrides: Any) -> dict[str, Any]:
    doc = {
        "id": "w-1",
        "activity": "running",
        "calories": 412.5,
        "day": "2024-06-15",
        "distance": 8012.3,
        "end_datetime": "2024-06-15T08:10:00+05:30",
        "intensity": "hard",
        "label": None,
        "source": "confirmed",
        "start_datetime": "2024-06-15T07:25:00+05:30",
    }
    return {**doc, **overrides}


def session_doc(**overrides: Any) -> dict[str, Any]:
    sample = {"interval": 5.0, "timestamp": "2024-06-15T14:00:00-07:00"}
    doc = {
        "id": "s-1",
        "day": "2024-06-15",
        "end_datetime": "2024-06-15T14:20:00-07:00",
        "heart_rate": {**sample, "items": [60.0, None, 56.0, 58.0]},
        "heart_rate_variability": {**sample, "items": [40.0, 50.0, None, None]},
        "mood": "good",
        "motion_count": {**sample, "items": [0.0, 1.0, 0.0, 0.0]},
        "start_datetime": "2024-06-15T14:00:00-07:00",
        "type": "nap",
    }
    return {**doc, **overrides}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {},
            {
                "start_at": datetime(2024, 6, 15, 1, 55, tzinfo=UTC),
                "end_at": datetime(2024, 6, 15, 2, 40, tzinfo=UTC),
                "duration_seconds": 2700,
                "utc_offset_minutes": 330,
                "activity": "running",
                "intensity": "hard",
                "calories_kcal": 412.5,
                "distance_m": 8012.3,
                "workout_source": "confirmed",
            },
        ),
        ({"distance": None, "activity": "yoga"}, {"distance_m": None, "activity": "yoga"}),
        ({"calories": None}, {"calories_kcal": None}),
        (
            {"start_datetime": "2024-06-15T23:30:00Z", "end_datetime": "2024-06-16T00:15:00.000Z"},
            {"utc_offset_minutes": 0, "duration_seconds": 2700},
        ),
        ({"label": "lunch walk"}, {"label": "lunch walk"}),
    ],
    ids=["full", "no-distance", "no-calories", "z-offsets-over-midnight", "label"],
)
def test_workout_row(overrides, expected):
    row = workout_row("p1", workout_doc(**overrides))
    assert (
        row.patient_id == "p1" and row.source == "oura" and row.id == "w-1" and row.day == date(2024, 6, 15)
    )
    for key, value in expected.items():
        assert getattr(row, key) == value, key


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"end_datetime": "2024-06-15T07:00:00+05:30"}, "ends before it starts"),
        ({"start_datetime": "2024-06-15T07:25:00"}, "without a UTC offset"),
        ({"start_datetime": None}, "missing 'start_datetime'"),
        ({"calories": "412"}, "should be a number"),
        ({"activity": None}, "'activity' should be text"),
        ({"day": "15/06/2024"}, "not an ISO date"),
    ],
    ids=["reversed", "offsetless", "no-start", "string-calories", "no-activity", "bad-day"],
)
def test_bad_workouts_are_refused_with_the_field_named(overrides, problem):
    with pytest.raises(NormalizationError, match=problem):
        workout_row("p1", workout_doc(**overrides))
    reason = validate_document("workout", workout_doc(**overrides))
    assert reason is not None and problem in reason


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {},
            {
                "session_type": "nap",
                "mood": "good",
                "hr_avg_bpm": 58.0,
                "hr_min_bpm": 56.0,
                "hr_max_bpm": 60.0,
                "hrv_avg_ms": 45.0,
                "samples": 3,
                "utc_offset_minutes": -420,
                "duration_seconds": 1200,
                "start_at": datetime(2024, 6, 15, 21, 0, tzinfo=UTC),
            },
        ),
        (
            {"heart_rate": None, "heart_rate_variability": None, "mood": None},
            {"hr_avg_bpm": None, "hr_min_bpm": None, "hrv_avg_ms": None, "samples": 0, "mood": None},
        ),
        (
            {
                "heart_rate": {
                    "interval": 5.0,
                    "items": [None, None],
                    "timestamp": "2024-06-15T14:00:00-07:00",
                }
            },
            {"hr_avg_bpm": None, "samples": 0},
        ),
        ({"type": "breathing"}, {"session_type": "breathing"}),
    ],
    ids=["nap", "no-series", "all-null-series", "breathing"],
)
def test_session_row(overrides, expected):
    row = session_row("p1", session_doc(**overrides))
    for key, value in expected.items():
        assert getattr(row, key) == value, key


def test_session_series_items_must_be_numbers():
    bad = session_doc(heart_rate={"interval": 5.0, "items": [60.0, "x"], "timestamp": "2024-06-15T14:00:00Z"})
    assert "should be a number" in (validate_document("session", bad) or "")


def test_several_workouts_a_day_are_each_a_row_and_a_revised_id_counts_once():
    walk = workout_doc(
        id="w-2",
        activity="walking",
        start_datetime="2024-06-15T12:00:00+05:30",
        end_datetime="2024-06-15T12:30:00+05:30",
    )
    revised = workout_doc(calories=430.0)
    rows = workout_rows("p1", [workout_doc(), walk, revised])
    assert [(r.id, r.calories_kcal) for r in rows] == [("w-1", 430.0), ("w-2", 412.5)]
    assert len(session_rows("p1", [session_doc(), session_doc(id="s-2", type="meditation")])) == 2


def spo2(day: str, average: float | None = 96.4, bdi: int | None = 7) -> dict[str, Any]:
    return {
        "id": f"spo2-{day}",
        "day": day,
        "spo2_percentage": None if average is None else {"average": average},
        "breathing_disturbance_index": bdi,
    }


def stress(day: str, high: int | None = 5400, recovery: int | None = 3600, summary: str | None = "normal"):
    return {
        "id": f"stress-{day}",
        "day": day,
        "stress_high": high,
        "recovery_high": recovery,
        "day_summary": summary,
    }


def resilience(day: str, level: str = "solid") -> dict[str, Any]:
    contributors = {"sleep_recovery": 71.5, "daytime_recovery": 55.0, "stress": 62.3}
    return {"id": f"res-{day}", "day": day, "contributors": contributors, "level": level}


def cv_age(day: str, years: int | None = 41) -> dict[str, Any]:
    return {"id": f"cva-{day}", "day": day, "vascular_age": years, "pulse_wave_velocity": 7.3}


@pytest.mark.parametrize(
    ("documents", "expected"),
    [
        (
            {
                "daily_spo2": [spo2("2024-06-15")],
                "daily_stress": [stress("2024-06-15")],
                "daily_resilience": [resilience("2024-06-15")],
                "daily_cardiovascular_age": [cv_age("2024-06-15")],
            },
            {
                date(2024, 6, 15): DailyWellness(
                    spo2_average_pct=96.4,
                    breathing_disturbance_index=7,
                    stress_high_seconds=5400,
                    recovery_high_seconds=3600,
                    stress_day_summary="normal",
                    resilience_level="solid",
                    vascular_age_years=41,
                )
            },
        ),
        ({"daily_spo2": [spo2("2024-06-15", None, None)]}, {}),
        (
            {"daily_stress": [stress("2024-06-15"), stress("2024-06-16", 0, 7200, "restored")]},
            {
                date(2024, 6, 15): DailyWellness(
                    stress_high_seconds=5400, recovery_high_seconds=3600, stress_day_summary="normal"
                ),
                date(2024, 6, 16): DailyWellness(
                    stress_high_seconds=0, recovery_high_seconds=7200, stress_day_summary="restored"
                ),
            },
        ),
        ({"daily_cardiovascular_age": [cv_age("2024-06-15", None)]}, {}),
    ],
    ids=["all-four", "spo2-unmeasured", "two-days", "cv-age-null"],
)
def test_daily_wellness(documents, expected):
    assert daily_wellness(documents) == expected


@pytest.mark.parametrize(
    ("collection", "doc", "problem"),
    [
        ("daily_spo2", {**spo2("2024-06-15"), "spo2_percentage": {"average": "96"}}, "should be a number"),
        ("daily_stress", stress("2024-06-15", summary="calm"), "should be one of"),
        ("daily_resilience", resilience("2024-06-15", level="great"), "should be one of"),
        ("daily_cardiovascular_age", cv_age("2024-06-15", 41.5), "should be an integer"),  # type: ignore[arg-type]
        ("daily_stress", {**stress("2024-06-15"), "day": None}, "missing 'day'"),
    ],
    ids=["spo2-string", "stress-summary", "resilience-level", "fractional-age", "no-day"],
)
def test_bad_daily_summaries_are_refused(collection, doc, problem):
    reason = validate_document(collection, doc)
    assert reason is not None and problem in reason
    assert validate_document(collection, {**doc, **_fixed(collection)}) is None


def _fixed(collection: str) -> dict[str, Any]:
    return {
        "daily_spo2": spo2("2024-06-15"),
        "daily_stress": stress("2024-06-15"),
        "daily_resilience": resilience("2024-06-15"),
        "daily_cardiovascular_age": cv_age("2024-06-15"),
    }[collection]


def test_a_day_with_only_wellness_figures_gets_a_daily_stats_row():
    day = date(2024, 6, 15)
    wellness = daily_wellness({"daily_stress": [stress("2024-06-15")]})
    rows = daily_stats_rows("p1", [], {}, {day: timedelta(hours=2)}, wellness)
    assert rows == [
        DailyStatsRow(
            patient_id="p1",
            day=day,
            readiness_score=None,
            sleep_score=None,
            activity_score=None,
            total_sleep_seconds=None,
            steps=None,
            active_calories=None,
            total_calories=None,
            average_hrv=None,
            resting_heart_rate=None,
            hr_min=None,
            hr_max=None,
            hr_avg=None,
            hr_samples=0,
            utc_offset_minutes=120,
            stress_high_seconds=5400,
            recovery_high_seconds=3600,
            stress_day_summary="normal",
        )
    ]
