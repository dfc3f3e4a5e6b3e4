"""Rebuilding the normalized patient-graph tables from the raw ones, one patient per short transaction.

Kept apart from Dagster, like `sync.py`: normalizing is a pure function of the raw tables, so the loop that
reads a patient's raw documents, screens them, writes the patient's rows and adds the counts to the run's
sync result can be tested and reused without a run. The normalized assets only wire resources to
`rebuild_per_patient` and report its `RebuildOutcome`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import duckdb

from oura_assets import normalize
from oura_assets import warehouse as wh
from oura_assets.retention import keep_pruned_heart_rate
from oura_assets.sync import RunLog, SyncError, heartrate_window

log = logging.getLogger(__name__)

# Writes one patient's rows of a table for days [start, end] from the documents read around them.
Writer = Callable[[duckdb.DuckDBPyConnection, str, date, date, dict[str, list[dict]]], int]


@dataclass(frozen=True)
class RebuildOutcome:
    patients: int
    rows: int


def patients_to_normalize(
    warehouse: wh.Warehouse, start: date, end: date, patient_id: str | None = None
) -> list[str]:
    """The run's patient, or everyone with raw data in the window: normalizing is a pure function of raw."""
    if patient_id:
        return [patient_id]
    with warehouse.connect("list patients with raw data") as conn:
        return wh.patients_with_raw_data(conn, start, end)


def read_daily_documents(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date, margin: timedelta
) -> tuple[dict[str, list[dict]], list[SyncError]]:
    """The patient's raw documents in [start - margin, end + margin], screened: a document the normalizers
    cannot read is left out of the normalized tables (and reported when it falls in [start, end]), but stays
    in the raw table exactly as Oura sent it."""
    documents: dict[str, list[dict]] = {}
    rejected: list[SyncError] = []
    low, high = start.isoformat(), end.isoformat()
    for collection in wh.DOCUMENT_COLLECTIONS:
        documents[collection] = []
        for document in wh.read_raw_documents(conn, collection, patient_id, start - margin, end + margin):
            reason = normalize.validate_document(collection, document)
            if reason is None:
                documents[collection].append(document)
            elif low <= str(document.get("day"))[:10] <= high:
                message = f"document {document.get('id')!r}: {reason}"
                rejected.append(SyncError("invalid_document", message, collection))
    return documents, rejected


def report_rejected(
    conn: duckdb.DuckDBPyConnection,
    run_id: str,
    patient_id: str,
    rejected: list[SyncError],
    progress: RunLog = log,
) -> None:
    """Log the documents left out and turn the patient's result in the run (if it has one) `partial`."""
    if not rejected:
        return
    progress.warning(f"patient {patient_id}: {len(rejected)} document(s) left out: {rejected[0].message}")
    previous = [r for r in wh.sync_results_for_run(conn, run_id) if r.patient_id == patient_id]
    if previous:
        wh.record_sync_result(
            conn,
            run_id=run_id,
            patient_id=patient_id,
            status="partial",
            start_day=previous[0].start_day,
            end_day=previous[0].end_day,
            rows={},
            errors=[e.to_dict() for e in rejected],
        )


def _wearable_rows(patient_id: str, docs: dict[str, list[dict]]) -> list[normalize.WearableRow]:
    return normalize.wearable_rows(
        patient_id, docs["daily_readiness"], docs["daily_sleep"], docs["sleep"], docs["daily_activity"]
    )


def _in_window(docs: dict[str, list[dict]], start: date, end: date) -> dict[str, list[dict]]:
    """The documents whose `day` lies in [start, end] (stored documents always carry an ISO `day`)."""
    low, high = start.isoformat(), end.isoformat()
    return {c: [d for d in found if low <= str(d.get("day"))[:10] <= high] for c, found in docs.items()}


def write_wearable_data(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date, nearby: dict[str, list[dict]]
) -> int:
    rows = _wearable_rows(patient_id, _in_window(nearby, start, end))
    return wh.replace_wearable_data(conn, patient_id, start, end, rows, datetime.now(UTC))


def write_daily_stats(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date, nearby: dict[str, list[dict]]
) -> int:
    # Offsets come from the wider span: a day without its own daily document borrows the nearest one.
    offsets = normalize.day_offsets(
        nearby["daily_readiness"], nearby["daily_sleep"], nearby["daily_activity"]
    )
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    samples = wh.read_raw_heartrate(conn, patient_id, *heartrate_window(start, end))
    hr_stats = normalize.heart_rate_day_stats(samples, offsets, days)
    # Days whose samples retention dropped keep the figures computed while they were there (retention.py).
    horizon = wh.retention_horizon(conn)
    if horizon is not None:
        stored = wh.daily_heart_rate_figures(conn, patient_id, start, end)
        hr_stats = keep_pruned_heart_rate(hr_stats, stored, offsets, days, horizon)
    wearable = _wearable_rows(patient_id, _in_window(nearby, start, end))
    rows = normalize.daily_stats_rows(patient_id, wearable, hr_stats, offsets)
    return wh.replace_daily_stats(conn, patient_id, start, end, rows, datetime.now(UTC))


def rebuild_per_patient(
    *,
    warehouse: wh.Warehouse,
    table: str,
    write: Writer,
    start: date,
    end: date,
    run_id: str,
    patient_id: str | None = None,
    margin: timedelta = timedelta(0),
    purpose: str = "rebuild",
    progress: RunLog = log,
) -> RebuildOutcome:
    """Rebuild `table` over days [start, end] from the raw tables, one patient per short transaction.

    Covers `patient_id`, or every patient with raw data in the window. Each patient's daily documents are
    read once, over the days widened by `margin`; `write` gets them all and picks the days itself.
    """
    patients = patients_to_normalize(warehouse, start, end, patient_id)
    total = 0
    for n, patient in enumerate(patients, start=1):
        with warehouse.transaction(f"{purpose}: write {table}") as conn:
            nearby, rejected = read_daily_documents(conn, patient, start, end, margin)
            report_rejected(conn, run_id, patient, rejected, progress)
            written = write(conn, patient, start, end, nearby)
            wh.add_sync_result_rows(conn, run_id=run_id, patient_id=patient, rows={table: written})
        total += written
        if len(patients) > 20 and n % 20 == 0:
            progress.info(f"patient {n} of {len(patients)} ({patient}): {written} rows")
    return RebuildOutcome(len(patients), total)
