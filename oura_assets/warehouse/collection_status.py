"""`wearable_collection_status`: per patient and Oura collection, whether their latest sync got it, and why
not.

A patient may not grant every scope (`workout`, `session`, `spo2Daily` …): that collection is skipped for
them and said so here, as `wearable_day_status` says why a day is missing. Written with the patient's sync
result, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import NamedTuple

import duckdb

from oura_assets.domain import COLLECTION_STATUSES, SOURCE
from oura_assets.warehouse.dialect import replace_rows
from oura_assets.warehouse.values import utc


class CollectionStatus(NamedTuple):
    status: str
    reason: str


def replace_collection_status(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    statuses: Mapping[str, CollectionStatus],
    *,
    start_day: date,
    end_day: date,
    updated_at: datetime,
) -> int:
    """Record each collection's status for the patient (collections not named keep theirs); returns rows."""
    rows = []
    for collection, (status, reason) in sorted(statuses.items()):
        if status not in COLLECTION_STATUSES:
            raise ValueError(f"unknown collection status {status!r}; expected one of {COLLECTION_STATUSES}")
        rows.append([patient_id, SOURCE, collection, status, reason, start_day, end_day, utc(updated_at)])
    columns = ("patient_id", "source", "collection", "status", "reason", "start_day", "end_day", "updated_at")
    # Keyed on both backends (a DuckLake has no primary key for INSERT OR REPLACE).
    replace_rows(
        conn,
        "patient_graph.wearable_collection_status",
        columns,
        rows,
        key=("patient_id", "source", "collection"),
    )
    return len(rows)


def read_collection_status(conn: duckdb.DuckDBPyConnection, patient_id: str) -> dict[str, CollectionStatus]:
    """The patient's collection statuses, by collection."""
    rows = conn.execute(
        "SELECT collection, status, reason FROM patient_graph.wearable_collection_status "
        "WHERE patient_id = ? AND source = ? ORDER BY collection",
        [patient_id, SOURCE],
    ).fetchall()
    return {collection: CollectionStatus(status, reason) for collection, status, reason in rows}
