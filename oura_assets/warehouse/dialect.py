"""Keyed writes that keep their guarantees on both backends: a DuckDB file and a DuckLake.

A DuckDB file enforces each table's primary key, and one writer at a time holds it (the writer lock), so
`INSERT OR REPLACE` and `ON CONFLICT` do the keyed writes. A DuckLake has no PRIMARY KEY, UNIQUE or index
and several writers at once, which it reconciles at COMMIT: a transaction that deleted from a table another
committed transaction changed meanwhile fails ("Transaction conflict") and is run again
(`Warehouse.attempts`). Two transactions that only insert never conflict, though, so "insert this key unless
it is there" would let two concurrent writers both insert it. Every keyed write on a lake therefore first
bumps its table's row in `main.write_guards` (an UPDATE is a delete plus an insert to DuckLake): two
transactions writing keys of the same table now always conflict, one of them runs again, and sees the
other's row. Plain appends of fresh unique ids (the audit log, events with a new uuid) need no guard.

The forms used on both backends are the ones without RETURNING (DuckLake 1.5.5 has none for UPDATE): an
UPDATE's result row is its count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from oura_assets.warehouse.lake import is_lake_connection
from oura_assets.warehouse.schema import TABLES

GUARDS_TABLE = "main.write_guards"
GUARDS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {GUARDS_TABLE} (table_name VARCHAR NOT NULL, writes BIGINT NOT NULL)"
)


def seed_guards_sql() -> str:
    """One guard row per table of `TABLES` that lacks one (run with the lake's schema migrations)."""
    names = ", ".join("('" + name + "')" for name in TABLES)
    return (
        f"INSERT INTO {GUARDS_TABLE} SELECT name, 0 FROM (VALUES {names}) AS v(name) "  # noqa: S608 (constants)
        f"WHERE name NOT IN (SELECT table_name FROM {GUARDS_TABLE})"
    )


def guard(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """On a lake, make this transaction conflict with any concurrent keyed write to `table`; returns whether
    the connection is a lake (a DuckDB file needs nothing: its primary keys and writer lock do the job)."""
    if not is_lake_connection(conn):
        return False
    conn.execute(f"UPDATE {GUARDS_TABLE} SET writes = writes + 1 WHERE table_name = ?", [table])  # noqa: S608
    return True


def updated(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | dict[str, Any]) -> int:
    """Run an UPDATE (or DELETE) and return how many rows it changed."""
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def insert_absent(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str],
    values: Sequence[Any],
    key: Sequence[str],
) -> bool:
    """Insert one row unless a row with its `key` exists; returns whether it was inserted."""
    lake = guard(conn, table)
    placeholders = ", ".join("?" for _ in columns)
    if not lake:
        row = conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",  # noqa: S608
            list(values),
        ).fetchone()
        return bool(row and row[0])
    by_name = dict(zip(columns, values, strict=True))
    match = " AND ".join(f"{k} = ?" for k in key)
    row = conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {placeholders} "  # noqa: S608
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {match})",
        [*values, *(by_name[k] for k in key)],
    ).fetchone()
    return bool(row and row[0])


def replace_row(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str],
    values: Sequence[Any],
    key: Sequence[str],
    *,
    exists: bool | None = None,
) -> None:
    """Insert one row, replacing the row with the same `key` if there is one.

    `exists`: whether the row is there, when the caller read it in this transaction. On a DuckDB file (one
    writer; the primary key refuses a row that appeared meanwhile) that makes the write a plain INSERT or an
    UPDATE: DuckDB's INSERT OR REPLACE cost ~2x the UPDATE and ~3x the INSERT (1.8 / 0.95 / 0.8 ms a row).
    """
    by_name = dict(zip(columns, values, strict=True))
    match = " AND ".join(f"{k} = ?" for k in key)
    into = f"INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    if guard(conn, table):
        conn.execute(f"DELETE FROM {table} WHERE {match}", [by_name[k] for k in key])  # noqa: S608
        conn.execute(f"INSERT {into}", list(values))
    elif exists is None:
        conn.execute(f"INSERT OR REPLACE {into}", list(values))
    elif not exists:
        conn.execute(f"INSERT {into}", list(values))
    else:
        rest = [c for c in columns if c not in key]
        conn.execute(
            f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in rest)} WHERE {match}",  # noqa: S608
            [*(by_name[c] for c in rest), *(by_name[k] for k in key)],
        )


def replace_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
) -> None:
    """`replace_row` for several rows: on a DuckDB file one statement (DuckDB's cost per statement, not per
    row, is what a patient's landing pays), on a lake a guarded delete and insert per row."""
    if not rows:
        return
    if is_lake_connection(conn):
        for row in rows:
            replace_row(conn, table, columns, row, key)
        return
    placeholders = "(" + ", ".join("?" for _ in columns) + ")"
    conn.execute(
        f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
        + ", ".join(placeholders for _ in rows),
        [value for row in rows for value in row],
    )
