"""Runs and what they leave behind: sync requests (queued by the API), sync results (one per run and patient)
and patient events.

Statuses and their rules (which exist, which are terminal, that a result only gets worse) are `domain`'s;
this module stores them. An event id recorded twice is left as it was, so a sensor that re-processes a run
does no harm.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import duckdb

from oura_assets import domain
from oura_assets.domain import SOURCE
from oura_assets.warehouse.dialect import insert_absent, replace_row, updated
from oura_assets.warehouse.values import dumps, loads, record_columns, record_row, record_values, to_day, utc


def record_event(
    conn: duckdb.DuckDBPyConnection,
    *,
    patient_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = SOURCE,
) -> str:
    """Append a `patient_events` row and return its id; an `event_id` already recorded is left as it was."""
    domain.check_event_type(event_type)
    values = [patient_id, event_type, source, utc(occurred_at or datetime.now(UTC)), dumps(payload)]
    columns = ("event_id", "patient_id", "event_type", "source", "occurred_at", "payload")
    if event_id is None:
        # A fresh uuid cannot be there yet: a plain append, which never conflicts with other writers.
        event_id = str(uuid.uuid4())
        conn.execute(
            f"INSERT INTO patient_graph.patient_events ({', '.join(columns)}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
            [event_id, *values],
        )
        return event_id
    insert_absent(conn, "patient_graph.patient_events", columns, [event_id, *values], key=("event_id",))
    return event_id


@dataclass(frozen=True)
class SyncRequestRecord:
    """A `sync_requests` row: a sync the connection API queued for the `oura_sync_requests` sensor."""

    sync_id: str
    patient_id: str
    source: str
    start_day: date
    end_day: date
    status: str
    requested_at: datetime
    run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: Any


_SYNC_REQUEST_COLUMNS = record_columns(SyncRequestRecord)


def _sync_request(row: Sequence[Any]) -> SyncRequestRecord:
    values = record_values(SyncRequestRecord, row)
    values["result"] = loads(values["result"])
    return SyncRequestRecord(**values)


def create_sync_request(
    conn: duckdb.DuckDBPyConnection, *, patient_id: str, start_day: date, end_day: date
) -> str:
    """Queue a sync of the patient's days [start_day, end_day]; returns the new sync id."""
    start, end = to_day(start_day), to_day(end_day)
    if end < start:
        raise ValueError(f"sync request ends ({end}) before it starts ({start})")
    sync_id = str(uuid.uuid4())
    conn.execute(
        f"INSERT INTO patient_graph.sync_requests ({_SYNC_REQUEST_COLUMNS}) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
        [sync_id, patient_id, SOURCE, start, end, domain.QUEUED, datetime.now(UTC)],
    )
    return sync_id


def queued_sync_requests(conn: duckdb.DuckDBPyConnection, limit: int = 50) -> list[SyncRequestRecord]:
    """The oldest `limit` requests still queued, oldest first."""
    rows = conn.execute(
        f"SELECT {_SYNC_REQUEST_COLUMNS} FROM patient_graph.sync_requests "  # noqa: S608
        "WHERE status = ? ORDER BY requested_at, sync_id LIMIT ?",
        [domain.QUEUED, limit],
    ).fetchall()
    return [_sync_request(row) for row in rows]


def get_sync_request(conn: duckdb.DuckDBPyConnection, sync_id: str) -> SyncRequestRecord | None:
    row = conn.execute(
        f"SELECT {_SYNC_REQUEST_COLUMNS} FROM patient_graph.sync_requests WHERE sync_id = ?",  # noqa: S608
        [sync_id],
    ).fetchone()
    return None if row is None else _sync_request(row)


def mark_sync_request(
    conn: duckdb.DuckDBPyConnection,
    sync_id: str,
    status: str,
    *,
    run_id: str | None = None,
    result: Any = None,
) -> bool:
    """Move a sync request to `status`; run id and result are kept unless given. Returns whether it exists.

    `started_at` is set the first time it runs, `finished_at` when it reaches success, partial or failed.
    """
    domain.check_sync_request_status(status)
    now = datetime.now(UTC)
    changed = updated(
        conn,
        """
        UPDATE patient_graph.sync_requests SET
            status = $status,
            run_id = coalesce($run_id, run_id),
            result = coalesce($result::JSON, result),
            started_at = CASE WHEN $running THEN coalesce(started_at, $now) ELSE started_at END,
            finished_at = CASE WHEN $terminal THEN $now ELSE NULL END
        WHERE sync_id = $sync_id
        """,
        {
            "status": status,
            "run_id": run_id,
            "result": None if result is None else dumps(result),
            "now": now,
            "running": status == domain.RUNNING,
            "terminal": domain.is_terminal_sync_status(status),
            "sync_id": sync_id,
        },
    )
    return changed > 0


@dataclass(frozen=True)
class SyncResultRecord:
    """A `sync_results` row: one patient's outcome in one run, with rows written per table and errors."""

    run_id: str
    patient_id: str
    source: str
    status: str
    start_day: date
    end_day: date
    rows: dict[str, int]
    errors: list[dict[str, Any]]
    recorded_at: datetime
    documents: dict[str, int]
    """Documents the sync fetched, by what they were to the warehouse: new, changed, unchanged, deleted."""


_SYNC_RESULT_COLUMNS = record_columns(SyncResultRecord)
_SYNC_RESULT_JSON = ("rows", "errors", "documents")  # stored as JSON text


def _sync_result(row: Sequence[Any]) -> SyncResultRecord:
    values = record_values(SyncResultRecord, row)
    values["rows"] = loads(values["rows"]) or {}
    values["errors"] = loads(values["errors"]) or []
    values["documents"] = loads(values["documents"]) or {}
    return SyncResultRecord(**values)


def sync_result(conn: duckdb.DuckDBPyConnection, run_id: str, patient_id: str) -> SyncResultRecord | None:
    """The patient's result in the run, or None. Filtered in SQL: the rebuilds ask for each patient's, and
    turning the run's every result into Python records each time made them grow with the square of the run's
    patients. (DuckDB scans the table for it: its index serves no lookup on a two-column key.)"""
    row = conn.execute(
        f"SELECT {_SYNC_RESULT_COLUMNS} FROM patient_graph.sync_results "  # noqa: S608
        "WHERE run_id = ? AND patient_id = ?",
        [run_id, patient_id],
    ).fetchone()
    return None if row is None else _sync_result(row)


def record_sync_result(
    conn: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    patient_id: str,
    status: str,
    start_day: date,
    end_day: date,
    rows: Mapping[str, int],
    errors: Iterable[Mapping[str, Any]],
    documents: Mapping[str, int] | None = None,
) -> SyncResultRecord:
    """Record (or add to) a patient's result in a run, and return the merged result.

    Called again for the same run and patient, it merges: row counts per table are updated, errors not yet
    recorded are appended, and the status only gets worse (`domain.worse_sync_status`). `documents` (the
    sync's counts of new, changed and unchanged documents) replaces the recorded counts when given.
    """
    domain.check_sync_result_status(status)
    previous = sync_result(conn, run_id, patient_id)
    merged_rows = {**(previous.rows if previous else {}), **{str(k): int(v) for k, v in rows.items()}}
    merged_errors = list(previous.errors) if previous else []
    for error in errors:
        error = dict(error)
        if error not in merged_errors:
            merged_errors.append(error)
    if previous is not None:
        status = domain.worse_sync_status(status, previous.status)
    merged_documents = dict(documents) if documents is not None else (previous.documents if previous else {})
    result = SyncResultRecord(
        run_id,
        patient_id,
        SOURCE,
        status,
        to_day(start_day),
        to_day(end_day),
        merged_rows,
        merged_errors,
        datetime.now(UTC),
        {str(k): int(v) for k, v in merged_documents.items()},
    )
    replace_row(
        conn,
        "patient_graph.sync_results",
        _SYNC_RESULT_COLUMNS.split(", "),
        record_row(result, _SYNC_RESULT_JSON),
        key=("run_id", "patient_id"),
        exists=previous is not None,  # read above: a first result is an INSERT, a later one an UPDATE
    )
    return result


def add_sync_result_rows(
    conn: duckdb.DuckDBPyConnection, *, run_id: str, patient_id: str, rows: Mapping[str, int]
) -> bool:
    """Add row counts (per table) to a patient's existing result in a run; False when there is none."""
    previous = sync_result(conn, run_id, patient_id)
    if previous is None:
        return False
    record_sync_result(
        conn,
        run_id=run_id,
        patient_id=patient_id,
        status=previous.status,
        start_day=previous.start_day,
        end_day=previous.end_day,
        rows=rows,
        errors=[],
    )
    return True


def sync_results_for_run(conn: duckdb.DuckDBPyConnection, run_id: str) -> list[SyncResultRecord]:
    """Every patient's result in the run, by patient id."""
    rows = conn.execute(
        f"SELECT {_SYNC_RESULT_COLUMNS} FROM patient_graph.sync_results "  # noqa: S608
        "WHERE run_id = ? ORDER BY patient_id",
        [run_id],
    ).fetchall()
    return [_sync_result(row) for row in rows]
