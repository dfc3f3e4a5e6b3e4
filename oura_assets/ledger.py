"""The ledger of sync state: the one writer of sync requests, sync results and `wearable_sync` events.

A sync's life is written in several places (the API queues it, a run claims it, the raw sync and the rebuild
record each patient's result, a sensor closes it and writes the events), so each step is an operation here,
named for what it means, and every caller (the API, `sync.py`, `rebuild.py`, the sensors) goes through it
instead of composing the warehouse's row functions itself. Plain functions over an open connection, so a
caller still composes them with its other writes in one transaction; no Dagster: a finished run arrives as
a `FinishedRun`. The status rules (which statuses exist, that a result only gets worse) are `domain`'s.

A finished run's outcome is recorded once: `record_run_outcome` writes nothing for a run already recorded
(`outcome_recorded`), so a sensor that sees the run again leaves its events and its sync request, and the
request's `finished_at`, as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb

from oura_assets import domain
from oura_assets import warehouse as wh
from oura_assets.shards import Shard, select

RUN_FAILED = "run_failed"
"""The error code a patient's outcome carries when the run around it did not succeed."""


def request_sync(conn: duckdb.DuckDBPyConnection, *, patient_id: str, start_day: date, end_day: date) -> str:
    """Queue a sync of the patient's days [start_day, end_day] for the request sensor; returns its sync id."""
    return wh.create_sync_request(conn, patient_id=patient_id, start_day=start_day, end_day=end_day)


def reject_request(conn: duckdb.DuckDBPyConnection, sync_id: str, *, code: str) -> bool:
    """Close a queued request that no run will carry out (e.g. `empty_range`); False when there is none."""
    return wh.mark_sync_request(conn, sync_id, domain.FAILED, result={"errors": [{"code": code}]})


def reserve_request(conn: duckdb.DuckDBPyConnection, sync_id: str) -> bool:
    """Mark a request `running` before any run exists, so the request sensor leaves it to the caller that
    executes its run itself (the API's first-data lane); that run claims it under its own id."""
    return wh.mark_sync_request(conn, sync_id, domain.RUNNING)


def release_request(conn: duckdb.DuckDBPyConnection, sync_id: str) -> bool:
    """Give a reserved request whose run could not start back to the queue (the sensor launches it)."""
    return wh.mark_sync_request(conn, sync_id, domain.QUEUED)


def claim_requests(conn: duckdb.DuckDBPyConnection, sync_ids: Iterable[str], *, run_id: str) -> None:
    """Mark the requests a run carries out `running`, under that run's id."""
    for sync_id in sync_ids:
        wh.mark_sync_request(conn, sync_id, domain.RUNNING, run_id=run_id)


def record_patient_result(
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
) -> wh.SyncResultRecord:
    """Record how a patient's sync went in a run (merged with what is there: the status only gets worse).

    `documents` counts the documents that were new, changed, unchanged and deleted.
    """
    return wh.record_sync_result(
        conn,
        run_id=run_id,
        patient_id=patient_id,
        status=status,
        start_day=start_day,
        end_day=end_day,
        rows=rows,
        errors=errors,
        documents=documents,
    )


def add_rows(
    conn: duckdb.DuckDBPyConnection, *, run_id: str, patient_id: str, rows: Mapping[str, int]
) -> bool:
    """Add rows written (per table) to a patient's result in a run; False when the run has none for them."""
    return wh.add_sync_result_rows(conn, run_id=run_id, patient_id=patient_id, rows=rows)


def mark_partial(
    conn: duckdb.DuckDBPyConnection, *, run_id: str, patient_id: str, errors: Sequence[Mapping[str, Any]]
) -> bool:
    """Turn a patient's result in a run `partial` (at best) for documents left out, with why; False when the
    run has no result for them (a rebuild outside a sync run)."""
    previous = wh.sync_result(conn, run_id, patient_id)
    if previous is None:
        return False
    record_patient_result(
        conn,
        run_id=run_id,
        patient_id=patient_id,
        status=domain.PARTIAL,
        start_day=previous.start_day,
        end_day=previous.end_day,
        rows={},
        errors=errors,
    )
    return True


@dataclass(frozen=True)
class FinishedRun:
    """What the ledger needs to know of a finished sync run (the sensor builds it from the Dagster run)."""

    run_id: str
    succeeded: bool
    ended: str
    """How the run ended, as people read it in an error: `SUCCESS`, `FAILURE`, `CANCELED`."""
    sync_ids: tuple[str, ...] = ()
    patient_id: str | None = None
    """The one patient the run was for, or None for every active connection."""
    start_day: str | None = None
    end_day: str | None = None
    shard: Shard | None = None
    """The shard the run was for (one of N runs that split the patients), or None for all of them."""
    meant_for_nobody: bool = False
    """The run named no patient it could sync (a malformed shard tag stops it before it claims any)."""


def sync_event_id(run_id: str, patient_id: str) -> str:
    """The `wearable_sync` event of a patient in a run: one per pair, whoever records it and how often."""
    return f"{domain.WEARABLE_SYNC}:{run_id}:{patient_id}"


def outcome_recorded(conn: duckdb.DuckDBPyConnection, run: FinishedRun) -> bool:
    """Whether the run's outcome is recorded: its `wearable_sync` events exist, or (a run that synced nobody)
    the sync requests it carried are closed. Read-only."""
    (events,) = conn.execute(
        "SELECT count(*) FROM patient_graph.patient_events WHERE event_type = ? AND starts_with(event_id, ?)",
        [domain.WEARABLE_SYNC, sync_event_id(run.run_id, "")],
    ).fetchone() or (0,)
    if events:
        return True
    requests = [r for r in (wh.get_sync_request(conn, s) for s in run.sync_ids) if r is not None]
    return bool(requests) and all(domain.is_terminal_sync_status(r.status) for r in requests)


def run_outcomes(conn: duckdb.DuckDBPyConnection, run: FinishedRun) -> dict[str, dict[str, Any]]:
    """Each patient's outcome of the finished run (the `wearable_sync` payload without the run id). Read-only.

    A run that did not succeed cannot leave a patient at `success`: their raw data landed but a later step
    (normalization) did not, so it is `partial`. A run that died before it reached anyone fails every
    patient it was meant for: its patient, or the active connections of its shard, or all of them (a shard
    run never writes an event for another shard's patient, who gets theirs from their own shard's run).
    """
    outcomes: dict[str, dict[str, Any]] = {}
    failure = {"code": RUN_FAILED, "message": f"run ended {run.ended}"}
    results = wh.sync_results_for_run(conn, run.run_id)
    for result in results:
        status, errors = result.status, list(result.errors)
        if not run.succeeded and status == domain.SUCCESS:
            status = domain.PARTIAL
            errors.append(failure)
        outcomes[result.patient_id] = {
            "status": status,
            "startDay": result.start_day.isoformat(),
            "endDay": result.end_day.isoformat(),
            "rows": result.rows,
            "errors": errors,
            "documents": result.documents,
        }
    if not results and not run.succeeded and not run.meant_for_nobody:
        active = [c.patient_id for c in wh.list_active_connections(conn, run.patient_id)]
        for patient_id in select(active, run.shard):
            outcomes[patient_id] = {
                "status": domain.FAILED,
                "startDay": run.start_day,
                "endDay": run.end_day,
                "rows": {},
                "errors": [failure],
            }
    return outcomes


def record_run_outcome(conn: duckdb.DuckDBPyConnection, run: FinishedRun) -> int | None:
    """Record a finished run once: a `wearable_sync` event per patient, and its sync requests closed.

    Returns the number of events written, or None (and writes nothing) when the run was recorded before.
    """
    if outcome_recorded(conn, run):
        return None
    outcomes = run_outcomes(conn, run)
    for patient_id, outcome in outcomes.items():
        wh.record_event(
            conn,
            patient_id=patient_id,
            event_type=domain.WEARABLE_SYNC,
            event_id=sync_event_id(run.run_id, patient_id),
            payload={"runId": run.run_id, **outcome},
        )
    for sync_id in run.sync_ids:
        request = wh.get_sync_request(conn, sync_id)
        if request is None:
            continue
        outcome = outcomes.get(request.patient_id)
        final = outcome["status"] if outcome else (domain.SUCCESS if run.succeeded else domain.FAILED)
        wh.mark_sync_request(conn, sync_id, final, run_id=run.run_id, result=outcome)
    return len(outcomes)
