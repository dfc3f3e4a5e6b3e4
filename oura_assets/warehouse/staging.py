"""Bulk writes: rows staged into DuckDB as JSON it parses itself, then mirrored into a table's window.

Values always travel as parameters, and bulk rows reach DuckDB as JSON arrays that DuckDB parses itself:
100k heart-rate samples land in about 0.3 s, where row-by-row binding takes seconds. Every table module that
replaces a window of rows (raw documents, heart rate, wearable_data, daily stats) goes through these two;
the normalized tables (a patient's window of Oura days) through `replace_day_window`, which composes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import duckdb

from oura_assets.domain import SOURCE
from oura_assets.warehouse.dialect import guard
from oura_assets.warehouse.table_spec import Table
from oura_assets.warehouse.values import day_window, dumps, utc

_STAGE_CHUNK = 50_000


def stage(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    select: str,
    records: Sequence[object],
    params: Sequence[Any],
    last_per: Sequence[str],
) -> None:
    """Load `records` into the temporary table `name`, parsed by DuckDB from JSON, the last one per key kept.

    `select` lists the staged columns as expressions over `value` (one record); `params` are its parameters.
    Only the last record per `last_per` columns is kept (a document given twice: the later one wins).
    Records travel as JSON arrays of `_STAGE_CHUNK`: one parameter per chunk is far cheaper than binding
    row by row, and chunks keep DuckDB's parse linear (one 35 MB array took 3x longer per row).
    """
    raw = f"{name}_all"
    for offset in range(0, max(len(records), 1), _STAGE_CHUNK):
        into = f"CREATE OR REPLACE TEMP TABLE {raw} AS" if offset == 0 else f"INSERT INTO {raw}"
        conn.execute(
            f"{into} SELECT key, {select} "  # noqa: S608 (constants, not values)
            "FROM (SELECT CAST(key AS BIGINT) + ? AS key, value FROM json_each(?::JSON))",
            [*params, offset, dumps(records[offset : offset + _STAGE_CHUNK])],
        )
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * EXCLUDE (key) FROM {raw} "  # noqa: S608
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(last_per)} ORDER BY key DESC) = 1"
    )
    conn.execute(f"DROP TABLE {raw}")


def mirror(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    staging: str,
    keys: Sequence[str],
    window: str,
    window_params: Sequence[Any],
) -> int:
    """Make `table` hold exactly the staged rows inside `window`, and upsert staged rows outside it.

    The window is deleted and the staged rows inserted, on both backends. Not `INSERT OR REPLACE`: on a
    DuckDB file its delete of the conflicting rows costs in proportion to the whole table, not to the rows
    replaced (864 heart-rate samples re-staged into a 17 M-row table: ~0.25 s of CPU, against ~0.03 s for
    deleting the window by its columns, which DuckDB's zone maps prune to the window's row groups, and
    inserting; at 1.7 M rows both cost ~0.015 s). Every nightly run re-stages the keys the last one wrote,
    so that cost grew with the warehouse on every write of every table. Staged rows outside the window (a
    document whose `day` moved, a sample outside its fetch window) are rare; their keys are deleted by a
    join only when there are any, since that join reads the whole table. Where the table has a primary key
    it still refuses a duplicate (DuckDB lets a transaction insert a key it deleted). Without one (a
    DuckLake, `oura_raw.heartrate`) the staged rows are one per key (`stage`'s `last_per`) and one writer at
    a time holds a DuckDB file; on a DuckLake the table's write guard (`dialect.guard`) makes a concurrent
    writer of the same table conflict and run again.
    """
    guard(conn, table)
    conn.execute(f"DELETE FROM {table} WHERE {window}", list(window_params))  # noqa: S608
    (outside,) = conn.execute(
        f"SELECT count(*) FROM {staging} WHERE ({window}) IS NOT TRUE",  # noqa: S608 (constants, not values)
        list(window_params),
    ).fetchone()
    if outside:
        match = " AND ".join(f"s.{k} = {table}.{k}" for k in keys)
        conn.execute(f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM {staging} s WHERE {match})")  # noqa: S608
    (written,) = conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {staging}").fetchone()  # noqa: S608
    conn.execute(f"DROP TABLE {staging}")
    return int(written)


def replace_day_window(
    conn: duckdb.DuckDBPyConnection,
    table: Table,
    patient_id: str,
    start_day: date,
    end_day: date,
    columns: str,
    records: Sequence[object],
    stamp: tuple[str, datetime],
) -> int:
    """Make the patient's rows of `table` for Oura days [start_day, end_day] exactly `records`; returns rows.

    The write behind every normalized table (a patient's window by `day`: re-running a range leaves the same
    rows, and a row whose document Oura dropped goes with its day's rebuild). `columns` are the staged
    columns as expressions over `value` (one record); the patient, `SOURCE` and `stamp` (the table's
    written-at column and its instant) are added to each row. Of records with the same key, the last wins.
    """
    start, end = day_window(start_day, end_day)
    stamp_column, stamped_at = stamp
    staging = f"_staged_{table.name.split('.', 1)[1]}"
    stage(
        conn,
        staging,
        f"?::VARCHAR AS patient_id, ?::VARCHAR AS source, {columns}, ?::TIMESTAMPTZ AS {stamp_column}",
        records,
        [patient_id, SOURCE, utc(stamped_at)],
        last_per=[k for k in table.primary_key if k not in ("patient_id", "source")],
    )
    return mirror(
        conn,
        table.name,
        staging,
        table.primary_key,
        "patient_id = ? AND source = ? AND day BETWEEN ? AND ?",
        [patient_id, SOURCE, start, end],
    )
