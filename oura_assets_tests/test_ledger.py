"""The ledger of sync state, without Dagster: a sync's life from request to recorded outcome, written once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from oura_assets import ledger
from oura_assets import warehouse as wh

D = date(2024, 6, 10)
NOW = datetime(2024, 6, 20, 12, tzinfo=UTC)
RUN = "run-1"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with wh.Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=20).connect("test") as connection:
        yield connection


def connect(conn: duckdb.DuckDBPyConnection, patient_id: str) -> None:
    wh.upsert_connection(
        conn,
        patient_id,
        oura_user_id=None,
        scopes=["daily"],
        access_token_enc="enc-a",
        refresh_token_enc="enc-r",
        expires_at=NOW + timedelta(days=1),
        connected_at=NOW,
    )


def sync_events(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT event_id, patient_id, occurred_at, payload FROM patient_graph.patient_events "
        "WHERE event_type = 'wearable_sync' ORDER BY event_id"
    ).fetchall()


def finished(succeeded: bool = True, **fields: Any) -> ledger.FinishedRun:
    ended = "SUCCESS" if succeeded else "FAILURE"
    return ledger.FinishedRun(run_id=RUN, succeeded=succeeded, ended=ended, **fields)


def test_a_sync_request_runs_and_its_outcome_is_recorded_once(conn):
    sync_id = ledger.request_sync(conn, patient_id="p1", start_day=D, end_day=D + timedelta(days=2))
    assert wh.get_sync_request(conn, sync_id).status == "queued"
    ledger.claim_requests(conn, [sync_id], run_id=RUN)
    claimed = wh.get_sync_request(conn, sync_id)
    assert (claimed.status, claimed.run_id, claimed.finished_at) == ("running", RUN, None)

    ledger.record_patient_result(
        conn,
        run_id=RUN,
        patient_id="p1",
        status="success",
        start_day=D,
        end_day=D + timedelta(days=2),
        rows={"oura_raw.sleep": 3},
        errors=[],
    )
    assert ledger.add_rows(conn, run_id=RUN, patient_id="p1", rows={"patient_graph.wearable_data": 9})
    assert not ledger.add_rows(conn, run_id=RUN, patient_id="nobody", rows={"x": 1})
    run = finished(sync_ids=(sync_id,), start_day=D.isoformat(), end_day=(D + timedelta(days=2)).isoformat())
    assert not ledger.outcome_recorded(conn, run)

    assert ledger.record_run_outcome(conn, run) == 1
    assert ledger.outcome_recorded(conn, run)
    request = wh.get_sync_request(conn, sync_id)
    assert request.status == "success" and request.finished_at is not None
    assert request.result["rows"] == {"oura_raw.sleep": 3, "patient_graph.wearable_data": 9}
    events = sync_events(conn)
    assert [e[0] for e in events] == [f"wearable_sync:{RUN}:p1"]

    # Seen again (a sensor's overlap, a reset cursor): nothing is written, finished_at does not move.
    for _ in range(3):
        assert ledger.record_run_outcome(conn, run) is None
    assert wh.get_sync_request(conn, sync_id) == request
    assert sync_events(conn) == events


def test_rejected_documents_make_a_result_partial_and_never_better_again(conn):
    common = {"run_id": RUN, "patient_id": "p1", "start_day": D, "end_day": D}
    ledger.record_patient_result(conn, status="success", rows={"oura_raw.sleep": 1}, errors=[], **common)
    error = {"code": "invalid_document", "message": "document 'x': score", "collection": "daily_readiness"}
    assert ledger.mark_partial(conn, run_id=RUN, patient_id="p1", errors=[error])
    assert not ledger.mark_partial(conn, run_id=RUN, patient_id="p2", errors=[error])
    ledger.record_patient_result(conn, status="success", rows={}, errors=[], **common)
    (result,) = wh.sync_results_for_run(conn, RUN)
    assert (result.status, result.errors, result.rows) == ("partial", [error], {"oura_raw.sleep": 1})
    assert wh.sync_results_for_run(conn, "other-run") == []


def test_a_failed_run_leaves_a_landed_patient_partial_and_its_request_partial(conn):
    sync_id = ledger.request_sync(conn, patient_id="p1", start_day=D, end_day=D)
    ledger.claim_requests(conn, [sync_id], run_id=RUN)
    ledger.record_patient_result(
        conn, run_id=RUN, patient_id="p1", status="success", start_day=D, end_day=D, rows={}, errors=[]
    )
    assert ledger.record_run_outcome(conn, finished(succeeded=False, sync_ids=(sync_id,))) == 1
    request = wh.get_sync_request(conn, sync_id)
    assert request.status == "partial"
    assert request.result["errors"] == [{"code": "run_failed", "message": "run ended FAILURE"}]
    ((event_id, patient_id, _, payload),) = sync_events(conn)
    assert (event_id, patient_id) == (f"wearable_sync:{RUN}:p1", "p1")
    assert json.loads(payload)["status"] == "partial" and '"run_failed"' in payload


def test_a_run_that_died_before_any_patient_fails_every_patient_it_was_for(conn):
    connect(conn, "p1")
    connect(conn, "p2")
    run = finished(succeeded=False, start_day="2024-06-10", end_day="2024-06-12")
    assert ledger.record_run_outcome(conn, run) == 2
    assert [(e[0], e[1]) for e in sync_events(conn)] == [
        (f"wearable_sync:{RUN}:p1", "p1"),
        (f"wearable_sync:{RUN}:p2", "p2"),
    ]
    # A patient who connects later is not added to the run's failure when it is seen again.
    connect(conn, "p3")
    assert ledger.record_run_outcome(conn, run) is None
    assert len(sync_events(conn)) == 2


def test_a_run_for_one_patient_that_died_fails_only_that_patient_and_closes_the_request(conn):
    connect(conn, "p1")
    connect(conn, "p2")
    sync_id = ledger.request_sync(conn, patient_id="p2", start_day=D, end_day=D)
    run = finished(succeeded=False, sync_ids=(sync_id,), patient_id="p2")
    assert ledger.record_run_outcome(conn, run) == 1
    assert [e[1] for e in sync_events(conn)] == ["p2"]
    assert wh.get_sync_request(conn, sync_id).status == "failed"


def test_a_successful_run_that_synced_nobody_closes_its_request_once(conn):
    sync_id = ledger.request_sync(conn, patient_id="gone", start_day=D, end_day=D)
    ledger.claim_requests(conn, [sync_id], run_id=RUN)
    run = finished(sync_ids=(sync_id,))
    assert ledger.record_run_outcome(conn, run) == 0
    closed = wh.get_sync_request(conn, sync_id)
    assert (closed.status, closed.result) == ("success", None)
    assert ledger.record_run_outcome(conn, run) is None
    assert wh.get_sync_request(conn, sync_id) == closed
    # A run with neither patients nor requests has nothing to write, however often it is seen.
    assert ledger.record_run_outcome(conn, finished()) == 0
    assert sync_events(conn) == []


def test_a_request_with_an_empty_range_is_rejected(conn):
    sync_id = ledger.request_sync(conn, patient_id="p1", start_day=D, end_day=D)
    assert ledger.reject_request(conn, sync_id, code="empty_range")
    rejected = wh.get_sync_request(conn, sync_id)
    assert (rejected.status, rejected.result) == ("failed", {"errors": [{"code": "empty_range"}]})
    assert rejected.finished_at is not None
    assert not ledger.reject_request(conn, "missing", code="empty_range")
    with pytest.raises(ValueError, match="ends"):
        ledger.request_sync(conn, patient_id="p1", start_day=D, end_day=D - timedelta(days=1))
