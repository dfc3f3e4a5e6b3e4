"""`patient_graph.audit_log`: who did what to whose data, appended and never changed.

There is an insert and there are reads; nothing here updates or deletes a row, and erasure leaves the table
alone (it is the record that the erasure happened). Callers write the entry on the connection of the action
it describes, so the action and its record commit together. What goes in is an id, a verdict and counts: a
value that could carry a token, a code, a state, a JWT or a health figure has no column to land in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from oura_assets.warehouse.values import dumps, loads, utc

OPERATOR = "operator"
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class AuditEntry:
    occurred_at: datetime
    actor: str | None
    action: str
    patient_id: str | None
    outcome: str
    request_id: str
    status_code: int | None = None
    client_address: str | None = None
    detail: dict[str, Any] | None = None
    audit_id: str = ""


def record_audit(conn: duckdb.DuckDBPyConnection, entry: AuditEntry) -> str:
    """Append `entry` (on the caller's connection, inside its transaction if any); returns its id."""
    audit_id = entry.audit_id or uuid.uuid4().hex
    conn.execute(
        "INSERT INTO patient_graph.audit_log (audit_id, occurred_at, actor, action, patient_id, outcome, "
        "status_code, client_address, request_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            audit_id,
            utc(entry.occurred_at),
            entry.actor,
            entry.action,
            entry.patient_id,
            entry.outcome,
            entry.status_code,
            entry.client_address,
            entry.request_id,
            None if entry.detail is None else dumps(entry.detail),
        ],
    )
    return audit_id


def read_audit_log(
    conn: duckdb.DuckDBPyConnection, patient_id: str | None = None, action: str | None = None
) -> list[AuditEntry]:
    """Entries, oldest first, optionally for one patient and/or one action."""
    rows = conn.execute(
        "SELECT occurred_at, actor, action, patient_id, outcome, request_id, status_code, client_address, "
        "detail, audit_id FROM patient_graph.audit_log "
        "WHERE (?::VARCHAR IS NULL OR patient_id = ?) AND (?::VARCHAR IS NULL OR action = ?) "
        "ORDER BY occurred_at, audit_id",
        [patient_id, patient_id, action, action],
    ).fetchall()
    return [
        AuditEntry(
            occurred_at=utc(row[0]),
            actor=row[1],
            action=row[2],
            patient_id=row[3],
            outcome=row[4],
            request_id=row[5],
            status_code=row[6],
            client_address=row[7],
            detail=loads(row[8]),
            audit_id=row[9],
        )
        for row in rows
    ]


def erasure_pending_compaction(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether an erasure removed rows after the file was last compacted (its bytes may linger until then)."""
    (pending,) = conn.execute(
        "SELECT coalesce(max(occurred_at) FILTER (WHERE action = 'erase' AND outcome = 'ok' "
        "AND coalesce(CAST(detail->>'totalRows' AS BIGINT), 1) > 0) "
        "> coalesce(max(occurred_at) FILTER (WHERE action = 'compact' AND outcome = 'ok'), "
        "'-infinity'::TIMESTAMPTZ), false) FROM patient_graph.audit_log"
    ).fetchone() or (False,)
    return bool(pending)
