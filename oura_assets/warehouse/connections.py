"""`wearable_connections`: each patient's connection to Oura, its status and its tokens (encrypted).

The tokens arrive here already encrypted (`tokens.py` owns the cipher); `ConnectionRecord` keeps them out of
its repr, so a logged record never carries one. Which status changes are allowed is `domain`'s to say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from oura_assets import domain
from oura_assets.domain import SOURCE
from oura_assets.warehouse.dialect import guard, updated
from oura_assets.warehouse.values import record_columns, record_values, utc


@dataclass(frozen=True)
class ConnectionRecord:
    """A `wearable_connections` row. The encrypted tokens stay out of its repr (and so out of logs)."""

    patient_id: str
    source: str
    status: str
    oura_user_id: str | None
    scopes: tuple[str, ...]
    access_token_enc: str | None = field(repr=False)
    refresh_token_enc: str | None = field(repr=False)
    expires_at: datetime | None
    connected_at: datetime | None
    last_synced_at: datetime | None
    last_error: str | None
    updated_at: datetime | None


_CONNECTION_COLUMNS = record_columns(ConnectionRecord)
_TABLE = "patient_graph.wearable_connections"


def _connection(row: Sequence[Any]) -> ConnectionRecord:
    values = record_values(ConnectionRecord, row)
    values["scopes"] = tuple(values["scopes"] or ())
    return ConnectionRecord(**values)


def upsert_connection(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    *,
    oura_user_id: str | None,
    scopes: Iterable[str],
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    connected_at: datetime,
) -> None:
    """Store a new (or renewed) connection: tokens replaced, status `active`, last error cleared.

    The tokens must already be encrypted (tokens.py). A reconnect without an Oura user id keeps the known one.
    """
    now = datetime.now(UTC)
    guard(conn, _TABLE)
    # UPDATE, else INSERT: the same on a DuckDB file and a DuckLake (no key there for ON CONFLICT); the
    # table's write guard makes two concurrent first connects of one patient conflict on a lake.
    changed = updated(
        conn,
        f"""
        UPDATE {_TABLE} SET
            status = ?, oura_user_id = coalesce(?, oura_user_id), scopes = ?, access_token_enc = ?,
            refresh_token_enc = ?, expires_at = ?, connected_at = ?, last_error = NULL, updated_at = ?
        WHERE patient_id = ? AND source = ?
        """,  # noqa: S608 (a constant table name)
        [
            domain.ACTIVE,
            oura_user_id,
            list(scopes),
            access_token_enc,
            refresh_token_enc,
            utc(expires_at),
            utc(connected_at),
            now,
            patient_id,
            SOURCE,
        ],
    )
    if changed:
        return
    conn.execute(
        f"INSERT INTO {_TABLE} ({_CONNECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",  # noqa: S608
        [
            patient_id,
            SOURCE,
            domain.ACTIVE,
            oura_user_id,
            list(scopes),
            access_token_enc,
            refresh_token_enc,
            utc(expires_at),
            utc(connected_at),
            now,
        ],
    )


def get_connection(
    conn: duckdb.DuckDBPyConnection, patient_id: str, source: str = SOURCE
) -> ConnectionRecord | None:
    row = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE patient_id = ? AND source = ?",
        [patient_id, source],
    ).fetchone()
    return None if row is None else _connection(row)


def list_connections(conn: duckdb.DuckDBPyConnection, patient_id: str) -> list[ConnectionRecord]:
    """All of the patient's connections, whatever their status, by source."""
    rows = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE patient_id = ? ORDER BY source",
        [patient_id],
    ).fetchall()
    return [_connection(row) for row in rows]


def list_active_connections(
    conn: duckdb.DuckDBPyConnection, patient_id: str | None = None
) -> list[ConnectionRecord]:
    """Oura connections with status `active` (of one patient when given), by patient id."""
    rows = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE source = ? AND status = ? AND (? IS NULL OR patient_id = ?) ORDER BY patient_id",
        [SOURCE, domain.ACTIVE, patient_id, patient_id],
    ).fetchall()
    return [_connection(row) for row in rows]


def save_tokens(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    *,
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    scopes: Iterable[str] | None = None,
) -> bool:
    """Store a refreshed (encrypted) token pair; scopes are kept unless given. Returns whether it was stored.

    Only where `domain.takes_refreshed_tokens` allows: the patient's disconnect must win over a refresh that
    was in flight when it happened. Callers hold the warehouse lock, so the status read here still holds.
    """
    current = conn.execute(
        "SELECT status FROM patient_graph.wearable_connections WHERE patient_id = ? AND source = ?",
        [patient_id, SOURCE],
    ).fetchone()
    if current is None or not domain.takes_refreshed_tokens(current[0]):
        return False
    conn.execute(
        """
        UPDATE patient_graph.wearable_connections
        SET access_token_enc = ?, refresh_token_enc = ?, expires_at = ?,
            scopes = coalesce(?::VARCHAR[], scopes), updated_at = ?
        WHERE patient_id = ? AND source = ?
        """,
        [
            access_token_enc,
            refresh_token_enc,
            utc(expires_at),
            None if scopes is None else list(scopes),
            datetime.now(UTC),
            patient_id,
            SOURCE,
        ],
    )
    return True


def set_connection_status(
    conn: duckdb.DuckDBPyConnection, patient_id: str, status: str, *, last_error: str | None = None
) -> bool:
    """Set the connection's status and last error (None clears it). Returns whether the connection exists."""
    domain.check_connection_status(status)
    return (
        updated(
            conn,
            "UPDATE patient_graph.wearable_connections SET status = ?, last_error = ?, updated_at = ? "
            "WHERE patient_id = ? AND source = ?",
            [status, last_error, datetime.now(UTC), patient_id, SOURCE],
        )
        > 0
    )


def mark_synced(conn: duckdb.DuckDBPyConnection, patient_id: str, at: datetime) -> bool:
    """Record a sync that landed data: `last_synced_at` moves to `at` and the last error is cleared."""
    return (
        updated(
            conn,
            "UPDATE patient_graph.wearable_connections SET last_synced_at = ?, last_error = NULL, "
            "updated_at = ? WHERE patient_id = ? AND source = ?",
            [utc(at), datetime.now(UTC), patient_id, SOURCE],
        )
        > 0
    )


def delete_tokens(conn: duckdb.DuckDBPyConnection, patient_id: str) -> bool:
    """Disconnect: forget both tokens and mark the connection `disconnected`. Returns whether it existed."""
    return (
        updated(
            conn,
            "UPDATE patient_graph.wearable_connections SET access_token_enc = NULL, "
            "refresh_token_enc = NULL, expires_at = NULL, status = ?, updated_at = ? "
            "WHERE patient_id = ? AND source = ?",
            [domain.DISCONNECTED, datetime.now(UTC), patient_id, SOURCE],
        )
        > 0
    )
