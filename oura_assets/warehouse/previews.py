"""A few rows of what a run wrote, for the Markdown preview on each asset's materialization in the UI.

Only columns a data scientist wants to glance at (never a token: none of these tables holds one), the newest
days of the run's range first.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import NamedTuple

import duckdb

# Per table: the columns (SQL expressions with a readable alias) and the column the day range filters on.
PREVIEW_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "oura_raw.daily_readiness": (
        (
            "patient_id",
            "day",
            "document->>'score' AS score",
            "document->>'temperature_deviation' AS temp_dev",
        ),
        "day",
    ),
    "oura_raw.daily_sleep": (("patient_id", "day", "document->>'score' AS score"), "day"),
    "oura_raw.sleep": (
        (
            "patient_id",
            "day",
            "document->>'type' AS type",
            "document->>'total_sleep_duration' AS total_sleep_s",
            "document->>'average_hrv' AS average_hrv",
        ),
        "day",
    ),
    "oura_raw.daily_activity": (
        ("patient_id", "day", "document->>'score' AS score", "document->>'steps' AS steps"),
        "day",
    ),
    "oura_raw.heartrate": (("patient_id", "timestamp", "source", "bpm"), "timestamp"),
    "oura_raw.workout": (
        ("patient_id", "day", "document->>'activity' AS activity", "document->>'calories' AS kcal"),
        "day",
    ),
    "oura_raw.session": (("patient_id", "day", "document->>'type' AS type"), "day"),
    "oura_raw.daily_spo2": (
        (
            "patient_id",
            "day",
            "document->'spo2_percentage'->>'average' AS spo2_avg",
            "document->>'breathing_disturbance_index' AS bdi",
        ),
        "day",
    ),
    "oura_raw.daily_stress": (
        (
            "patient_id",
            "day",
            "document->>'stress_high' AS stress_s",
            "document->>'recovery_high' AS recovery_s",
        ),
        "day",
    ),
    "oura_raw.daily_resilience": (("patient_id", "day", "document->>'level' AS level"), "day"),
    "oura_raw.daily_cardiovascular_age": (
        ("patient_id", "day", "document->>'vascular_age' AS vascular_age"),
        "day",
    ),
    "patient_graph.wearable_workouts": (
        ("patient_id", "day", "start_at", "activity", "intensity", "calories_kcal", "distance_m"),
        "day",
    ),
    "patient_graph.wearable_sessions": (
        ("patient_id", "day", "start_at", "session_type", "hr_avg_bpm", "hrv_avg_ms"),
        "day",
    ),
    "patient_graph.wearable_data": (("patient_id", "metric_type", "day", "metrics"), "day"),
    "patient_graph.wearable_day_status": (("patient_id", "day", "status", "reason"), "day"),
    "patient_graph.patient_wearable_daily_stats": (
        (
            "patient_id",
            "day",
            "readiness_score",
            "sleep_score",
            "total_sleep_seconds",
            "steps",
            "average_hrv",
            "resting_heart_rate",
            "hr_avg",
        ),
        "day",
    ),
}


class Preview(NamedTuple):
    table: str
    columns: list[str]
    rows: list[tuple]


def preview_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    start: date,
    end: date,
    patient_id: str | None = None,
    limit: int = 5,
) -> Preview:
    """Up to `limit` rows of `table` in [start, end] (one patient's, when given), newest first."""
    columns, day_column = PREVIEW_COLUMNS[table]
    if day_column == "day":
        where, params = "day BETWEEN ? AND ?", [start, end]
    else:
        where, params = f"{day_column} >= ? AND {day_column} < ?", [start, end + timedelta(days=1)]
    if patient_id is not None:
        where, params = where + " AND patient_id = ?", [*params, patient_id]
    result = conn.execute(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {where} "  # noqa: S608 (names from PREVIEW_COLUMNS)
        f"ORDER BY {day_column} DESC, patient_id LIMIT {int(limit)}",
        params,
    )
    return Preview(table, [d[0] for d in result.description], result.fetchall())
