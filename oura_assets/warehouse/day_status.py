"""`patient_graph.wearable_day_status`: a patient's window of day statuses, replaced as a whole.

`oura_assets.day_status` decides each day's status and reason (pure); this module only stores them, so the
rebuild and the sync write the same rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

import duckdb

from oura_assets.domain import SOURCE, check_day_status
from oura_assets.warehouse.schema import TABLES
from oura_assets.warehouse.staging import replace_day_window
from oura_assets.warehouse.values import day_window, get_field, to_day


def replace_day_status(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    updated_at: datetime,
) -> int:
    """Make the patient's day statuses for days [start_day, end_day] exactly `rows`; returns rows written.

    A row is a mapping or an object (`day_status.DayStatus`) with day, status and reason; every day must lie
    in the window (a status explains a synced day, so none is written outside the range that was synced).
    """
    start, end = day_window(start_day, end_day)
    records = []
    for row in rows:
        day = to_day(get_field(row, "day"))
        if not start <= day <= end:
            raise ValueError(f"day status for {day} given while writing days {start}..{end}")
        records.append(
            {
                "day": day,
                "status": check_day_status(get_field(row, "status")),
                "reason": get_field(row, "reason"),
            }
        )
    return replace_day_window(
        conn,
        TABLES["patient_graph.wearable_day_status"],
        patient_id,
        start,
        end,
        "CAST(value->>'day' AS DATE) AS day, value->>'status' AS status, value->>'reason' AS reason",
        records,
        ("updated_at", updated_at),
    )


def read_day_status(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start_day: date, end_day: date
) -> dict[date, tuple[str, str]]:
    """The patient's stored (status, reason) by day for days [start_day, end_day]."""
    rows = conn.execute(
        "SELECT day, status, reason FROM patient_graph.wearable_day_status "
        "WHERE patient_id = ? AND source = ? AND day BETWEEN ? AND ? ORDER BY day",
        [patient_id, SOURCE, to_day(start_day), to_day(end_day)],
    ).fetchall()
    return {day: (status, reason) for day, status, reason in rows}
