"""`wearable_workouts` and `wearable_sessions`: one row per Oura document, a patient's day window replaced.

Rows come from `normalize` (`WorkoutRow`, `SessionRow`) or as mappings with the tables' columns; each is
checked to belong to the patient being written. The window is by Oura `day`, like every normalized table, so
re-running a range leaves the same rows and a workout Oura deleted disappears with its day's rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import duckdb

from oura_assets.domain import SOURCE
from oura_assets.warehouse.schema import TABLES
from oura_assets.warehouse.staging import replace_day_window
from oura_assets.warehouse.table_spec import Table
from oura_assets.warehouse.values import get_field, to_day, utc


def _replace(
    conn: duckdb.DuckDBPyConnection,
    table: Table,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    synced_at: datetime,
) -> int:
    columns = {c.name: c.type for c in table.columns if c.name not in ("patient_id", "source", "synced_at")}
    records = []
    for row in rows:
        found = get_field(row, "patient_id", patient_id)
        if found != patient_id or get_field(row, "source", SOURCE) != SOURCE:
            raise ValueError(
                f"{table.name}: row for patient {found!r} given while writing patient {patient_id!r}"
            )
        record: dict[str, Any] = {name: get_field(row, name, None) for name in columns}
        if not record["id"]:
            raise ValueError(f"{table.name}: a row needs an `id`, got {record!r:.200}")
        record["day"] = to_day(record["day"])
        for name in ("start_at", "end_at"):
            record[name] = utc(record[name])
        records.append(record)
    select = ", ".join(f"CAST(value->>'{name}' AS {type_}) AS {name}" for name, type_ in columns.items())
    return replace_day_window(
        conn, table, patient_id, start_day, end_day, select, records, ("synced_at", synced_at)
    )


def replace_workouts(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    synced_at: datetime,
) -> int:
    """Make the patient's `wearable_workouts` for days [start_day, end_day] exactly `rows`; returns rows."""
    return _replace(
        conn, TABLES["patient_graph.wearable_workouts"], patient_id, start_day, end_day, rows, synced_at
    )


def replace_sessions(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    synced_at: datetime,
) -> int:
    """Make the patient's `wearable_sessions` for days [start_day, end_day] exactly `rows`; returns rows."""
    return _replace(
        conn, TABLES["patient_graph.wearable_sessions"], patient_id, start_day, end_day, rows, synced_at
    )
