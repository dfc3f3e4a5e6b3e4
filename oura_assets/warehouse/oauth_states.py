"""`oauth_states`: the OAuth `state` values the connect route hands out, stored by hash, spent once.

The state is the callback's only credential, so only its hash is kept and spending it is one conditional
UPDATE: two callbacks racing with the same state cannot both succeed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from oura_assets.warehouse.dialect import updated
from oura_assets.warehouse.values import utc


def save_oauth_state(
    conn: duckdb.DuckDBPyConnection,
    state_hash: str,
    patient_id: str,
    expires_at: datetime,
    created_at: datetime | None = None,
) -> None:
    """Remember an OAuth `state` (by its hash only: the state itself is a bearer secret) for one patient."""
    conn.execute(
        "INSERT INTO patient_graph.oauth_states (state_hash, patient_id, created_at, expires_at, used_at) "
        "VALUES (?, ?, ?, ?, NULL)",
        [state_hash, patient_id, utc(created_at or datetime.now(UTC)), utc(expires_at)],
    )


def consume_oauth_state(conn: duckdb.DuckDBPyConnection, state_hash: str, now: datetime) -> str | None:
    """Spend a state: its patient id once, then None; None too for an unknown or expired state."""
    # SELECT then UPDATE, not UPDATE … RETURNING (DuckLake has none): inside the caller's transaction, and
    # two callbacks spending one state both update its row, which a DuckDB file serializes and a DuckLake
    # refuses to commit twice (the loser runs again and finds the state spent).
    row = conn.execute(
        "SELECT patient_id FROM patient_graph.oauth_states "
        "WHERE state_hash = ? AND used_at IS NULL AND expires_at > ?",
        [state_hash, utc(now)],
    ).fetchone()
    if row is None:
        return None
    spent = updated(
        conn,
        "UPDATE patient_graph.oauth_states SET used_at = ? "
        "WHERE state_hash = ? AND used_at IS NULL AND expires_at > ?",
        [utc(now), state_hash, utc(now)],
    )
    return row[0] if spent else None


def purge_oauth_states(conn: duckdb.DuckDBPyConnection, before: datetime) -> int:
    """Delete states that expired before `before` (used or not); returns how many."""
    (count,) = conn.execute(
        "DELETE FROM patient_graph.oauth_states WHERE expires_at < ?", [utc(before)]
    ).fetchone()
    return int(count)
