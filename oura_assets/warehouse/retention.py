"""Dropping raw rows older than the retention horizon, and remembering the horizon for the rebuild.

`retention_horizons` holds, per raw table, the instant before which rows were dropped. It only ever moves
forward: lengthening the retention later does not bring dropped rows back, so the horizon stays where data
really ends. The daily-stats rebuild reads it (`retention_horizon`) to keep the heart-rate figures it
computed while the samples were still there (`daily_heart_rate_figures`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import duckdb

from oura_assets.warehouse.dialect import guard, updated
from oura_assets.warehouse.normalized import read_daily_heart_rate
from oura_assets.warehouse.values import utc

RAW_HEARTRATE = "oura_raw.heartrate"


def prune_raw_heartrate(conn: duckdb.DuckDBPyConnection, cutoff: datetime, applied_at: datetime) -> int:
    """Delete samples taken before `cutoff` (every patient) and record the horizon; returns rows deleted."""
    (deleted,) = conn.execute(
        f"DELETE FROM {RAW_HEARTRATE} WHERE timestamp < ?",  # noqa: S608 (a constant table name)
        [utc(cutoff)],
    ).fetchone() or (0,)
    # UPDATE, else INSERT (no key on a DuckLake for ON CONFLICT), under the table's write guard.
    guard(conn, "patient_graph.retention_horizons")
    if not updated(
        conn,
        "UPDATE patient_graph.retention_horizons SET cutoff = greatest(cutoff, ?), rows_deleted = ?, "
        "applied_at = ? WHERE table_name = ?",
        [utc(cutoff), int(deleted), utc(applied_at), RAW_HEARTRATE],
    ):
        conn.execute(
            "INSERT INTO patient_graph.retention_horizons (table_name, cutoff, rows_deleted, applied_at) "
            "VALUES (?, ?, ?, ?)",
            [RAW_HEARTRATE, utc(cutoff), int(deleted), utc(applied_at)],
        )
    return int(deleted)


def retention_horizon(conn: duckdb.DuckDBPyConnection, table: str = RAW_HEARTRATE) -> datetime | None:
    """The instant before which `table`'s rows were dropped, or None when retention never ran on it."""
    row = conn.execute(
        "SELECT cutoff FROM patient_graph.retention_horizons WHERE table_name = ?", [table]
    ).fetchone()
    return utc(row[0]) if row else None


def daily_heart_rate_figures(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date
) -> dict[date, dict[str, Any]]:
    """The patient's stored heart-rate figures (days with samples) in [start, end], by day, as mappings.

    The same read as `normalized.read_daily_heart_rate` (one query, one home); retention takes mappings.
    """
    return {
        day: figures._asdict() for day, figures in read_daily_heart_rate(conn, patient_id, start, end).items()
    }
