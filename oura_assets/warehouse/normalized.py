"""The normalized tables, `wearable_data` and `patient_wearable_daily_stats`: a patient's window replaced.

Rows come from `normalize` (its dataclasses) or as mappings; each is checked to belong to the patient and
source being written, so one patient's rows can never land in another's window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any, NamedTuple

import duckdb

from oura_assets.domain import SOURCE
from oura_assets.warehouse.schema import TABLES
from oura_assets.warehouse.staging import replace_day_window
from oura_assets.warehouse.values import day_window, get_field, to_day

_WEARABLE_DATA_TABLE = TABLES["patient_graph.wearable_data"]
_DAILY_STATS_TABLE = TABLES["patient_graph.patient_wearable_daily_stats"]
_DAILY_STATS_COLUMNS: dict[str, str] = {
    column.name: column.type
    for column in _DAILY_STATS_TABLE.columns
    if column.name not in (*_DAILY_STATS_TABLE.primary_key, "updated_at")
}
"""The stats columns a daily-stats row carries, with their DuckDB types (the key and `updated_at` aside)."""


def _check_patient(row: object, patient_id: str) -> None:
    found = get_field(row, "patient_id", patient_id)
    if found != patient_id:
        raise ValueError(f"row for patient {found!r} given while writing patient {patient_id!r}")
    source = get_field(row, "source", SOURCE)
    if source != SOURCE:
        raise ValueError(f"row with source {source!r}; this warehouse writes source {SOURCE!r} only")


def replace_wearable_data(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    synced_at: datetime,
) -> int:
    """Make the patient's `wearable_data` for days [start_day, end_day] exactly `rows`; returns rows written.

    A row is a mapping or an object (`normalize.WearableRow`) with metric_type, day and metrics (a dict).
    """
    records = []
    for row in rows:
        _check_patient(row, patient_id)
        metrics = get_field(row, "metrics")
        if not isinstance(metrics, Mapping):
            raise ValueError(f"wearable_data row metrics must be a mapping, got {type(metrics).__name__}")
        records.append(
            {
                "metric_type": str(get_field(row, "metric_type")),
                "day": to_day(get_field(row, "day")),
                "metrics": metrics,
            }
        )
    return replace_day_window(
        conn,
        _WEARABLE_DATA_TABLE,
        patient_id,
        start_day,
        end_day,
        "value->>'metric_type' AS metric_type, CAST(value->>'day' AS DATE) AS day, "
        "value->'metrics' AS metrics",
        records,
        ("synced_at", synced_at),
    )


def replace_daily_stats(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    updated_at: datetime,
) -> int:
    """Make the patient's daily stats for days [start_day, end_day] exactly `rows`; returns rows written.

    A row is a mapping or an object (`normalize.DailyStatsRow`) with day and the stats columns; a missing
    stats field is stored as NULL.
    """
    records = []
    for row in rows:
        _check_patient(row, patient_id)
        record: dict[str, Any] = {"day": to_day(get_field(row, "day"))}
        record.update({column: get_field(row, column, None) for column in _DAILY_STATS_COLUMNS})
        records.append(record)
    stats = ", ".join(f"CAST(value->>'{c}' AS {t}) AS {c}" for c, t in _DAILY_STATS_COLUMNS.items())
    return replace_day_window(
        conn,
        _DAILY_STATS_TABLE,
        patient_id,
        start_day,
        end_day,
        f"CAST(value->>'day' AS DATE) AS day, {stats}",
        records,
        ("updated_at", updated_at),
    )


class DailyHeartRate(NamedTuple):
    """The heart-rate figures a daily-stats row holds for one day (samples > 0)."""

    hr_min: int | float
    hr_max: int | float
    hr_avg: float
    hr_samples: int
    utc_offset_minutes: int


def read_daily_heart_rate(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start_day: date, end_day: date
) -> dict[date, DailyHeartRate]:
    """The patient's stored heart-rate figures for days [start_day, end_day] that have any, by day.

    What a rebuild keeps when this run could not fetch heart rate, rather than overwriting it with nothing.
    """
    start, end = day_window(start_day, end_day)
    rows = conn.execute(
        "SELECT day, hr_min, hr_max, hr_avg, hr_samples, utc_offset_minutes "
        "FROM patient_graph.patient_wearable_daily_stats "
        "WHERE patient_id = ? AND source = ? AND day BETWEEN ? AND ? AND hr_samples > 0",
        [patient_id, SOURCE, start, end],
    ).fetchall()
    return {day: DailyHeartRate(*figures) for day, *figures in rows}
