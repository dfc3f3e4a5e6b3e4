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

from oura_assets import ledger, normalize
from oura_assets import warehouse as wh
from oura_assets.day_status_writer import write_day_status
from oura_assets.domain import HEARTRATE, SESSION, WORKOUT
from oura_assets.retention import keep_pruned_heart_rate
from oura_assets.shards import Shard, select
from oura_assets.sync import heartrate_window
from oura_assets.sync_errors import FETCH_FAILURE_CODES, SyncError
from oura_assets.sync_outcome import RunLog
from oura_assets.warehouse.group_writer import group_size as lake_group_size

log = logging.getLogger(__name__)

# Writes one patient's rows of a table for days [start, end] from the documents read around them; the last
# argument names the collections this run could not fetch for the patient (their raw tables hold what
# earlier runs landed).
Writer = Callable[[duckdb.DuckDBPyConnection, str, date, date, dict[str, list[dict]], frozenset[str]], int]


DAY_STATUS_TABLE = "patient_graph.wearable_day_status"
# Patients rebuilt per transaction. On a DuckDB file each transaction takes the writer lock and attaches and
# detaches (checkpoints) the file: one per patient made that fixed cost most of a nightly rebuild of 100
# patients. A group of 25 holds the lock for a second or two, short beside other writers' lock timeout.
GROUP_SIZE = 25


@dataclass(frozen=True)
class RebuildOutcome:
    patients: int
    rows: int


def patients_to_normalize(
    warehouse: wh.WarehouseAccess,
    start: date,
    end: date,
    patient_id: str | None = None,
    run_id: str | None = None,
    shard: Shard | None = None,
) -> list[str]:
    """The run's patient, or everyone with raw data in the window or a sync result in the run (of those,
    only the ones in `shard` for a sharded run: the other shards' runs rebuild theirs).

    Normalizing is a pure function of raw; the run's patients are added so one whose sync landed nothing
    (ring off all week, a broken token) still gets its window rebuilt and its days explained.
    """
    if patient_id:
        return select([patient_id], shard)
    with warehouse.connect("list patients with raw data") as conn:
        with_data = wh.patients_with_raw_data(conn, start, end)
        in_run = [r.patient_id for r in wh.sync_results_for_run(conn, run_id)] if run_id else []
    return select(sorted({*with_data, *in_run}), shard)


def read_daily_documents(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date, margin: timedelta
) -> tuple[dict[str, list[dict]], list[SyncError]]:
    """The patient's raw documents in [start - margin, end + margin], screened: a document the normalizers
    cannot read is left out of the normalized tables (and reported when it falls in [start, end]), but stays
    in the raw table exactly as Oura sent it."""
    return read_group_documents(conn, [patient_id], start, end, margin)[patient_id]


def read_group_documents(
    conn: duckdb.DuckDBPyConnection, patients: list[str], start: date, end: date, margin: timedelta
) -> dict[str, tuple[dict[str, list[dict]], list[SyncError]]]:
    """`read_daily_documents` for several patients, one query per collection for all of them."""
    found: dict[str, tuple[dict[str, list[dict]], list[SyncError]]] = {p: ({}, []) for p in patients}
    low, high = start.isoformat(), end.isoformat()
    for collection in wh.DOCUMENT_COLLECTIONS:
        stored = wh.read_raw_documents_of(conn, collection, patients, start - margin, end + margin)
        for patient in patients:
            documents, rejected = found[patient]
            documents[collection] = []
            for document in stored[patient]:
                reason = normalize.validate_document(collection, document)
                if reason is None:
                    documents[collection].append(document)
                elif low <= str(document.get("day"))[:10] <= high:
                    message = f"document {document.get('id')!r}: {reason}"
                    rejected.append(SyncError("invalid_document", message, collection))
    return found


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
    ledger.mark_partial(conn, run_id=run_id, patient_id=patient_id, errors=[e.to_dict() for e in rejected])


def fetch_failures(conn: duckdb.DuckDBPyConnection, run_id: str, patient_id: str) -> frozenset[str]:
    """The collections whose fetch failed for the patient in this run (after every refetch pass)."""
    result = wh.sync_result(conn, run_id, patient_id)
    return frozenset(
        str(error["collection"])
        for error in (result.errors if result is not None else ())
        if error.get("code") in FETCH_FAILURE_CODES and error.get("collection")
    )


def keep_earlier_heart_rate(
    computed: dict[date, normalize.HeartRateDayStats], earlier: dict[date, wh.DailyHeartRate]
) -> tuple[dict[date, normalize.HeartRateDayStats], list[date]]:
    """Heart-rate figures when this run could not fetch heart rate: a day keeps the figures stored before
    (what was fetched when Oura answered), and only a day without any takes what the raw table gives.
    Returns the figures and the days that kept theirs."""
    merged = dict(computed)
    for day, figures in earlier.items():
        merged[day] = normalize.HeartRateDayStats(
            hr_min=figures.hr_min,
            hr_max=figures.hr_max,
            hr_avg=figures.hr_avg,
            hr_samples=figures.hr_samples,
            utc_offset=timedelta(minutes=figures.utc_offset_minutes),
        )
    return merged, sorted(earlier)


def _wearable_rows(patient_id: str, docs: dict[str, list[dict]]) -> list[normalize.WearableRow]:
    return normalize.wearable_rows(
        patient_id, docs["daily_readiness"], docs["daily_sleep"], docs["sleep"], docs["daily_activity"]
    )


def _in_window(docs: dict[str, list[dict]], start: date, end: date) -> dict[str, list[dict]]:
    """The documents whose `day` lies in [start, end] (stored documents always carry an ISO `day`)."""
    low, high = start.isoformat(), end.isoformat()
    return {c: [d for d in found if low <= str(d.get("day"))[:10] <= high] for c, found in docs.items()}


def write_wearable_data(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: date,
    end: date,
    nearby: dict[str, list[dict]],
    failed: frozenset[str] = frozenset(),
) -> int:
    # A collection whose fetch failed was left as it was in the raw tables, so rebuilding from raw keeps the
    # rows earlier runs built from it: nothing more to do for `failed` here.
    rows = _wearable_rows(patient_id, _in_window(nearby, start, end))
    return wh.replace_wearable_data(conn, patient_id, start, end, rows, datetime.now(UTC))


def write_daily_stats(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: date,
    end: date,
    nearby: dict[str, list[dict]],
    failed: frozenset[str] = frozenset(),
) -> int:
    """Rebuild the patient's daily stats for [start, end]. When this run could not fetch heart rate, a day
    keeps the heart-rate figures it had: a fetch failure is not a day without heart rate."""
    # Offsets come from the wider span: a day without its own daily document borrows the nearest one.
    offsets = normalize.day_offsets(
        nearby["daily_readiness"], nearby["daily_sleep"], nearby["daily_activity"]
    )
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    samples = wh.read_raw_heartrate(conn, patient_id, *heartrate_window(start, end))
    hr_stats = normalize.heart_rate_day_stats(samples, offsets, days)
    if HEARTRATE in failed:
        earlier = wh.read_daily_heart_rate(conn, patient_id, start, end)
        hr_stats, kept = keep_earlier_heart_rate(hr_stats, earlier)
        without = [d for d in days if d not in hr_stats or hr_stats[d].hr_samples == 0]
        log.warning(
            "patient %s: heart rate could not be fetched in this run; kept the earlier heart-rate figures "
            "of %d day(s), %d day(s) have none yet (a fetch failure, not days without heart rate)",
            patient_id,
            len(kept),
            len(without),
        )
    # Days whose samples retention dropped keep the figures computed while they were there (retention.py).
    horizon = wh.retention_horizon(conn)
    if horizon is not None:
        stored = wh.daily_heart_rate_figures(conn, patient_id, start, end)
        hr_stats = keep_pruned_heart_rate(hr_stats, stored, offsets, days, horizon)
    in_window = _in_window(nearby, start, end)
    wearable = _wearable_rows(patient_id, in_window)
    wellness = normalize.daily_wellness(in_window)
    rows = normalize.daily_stats_rows(patient_id, wearable, hr_stats, offsets, wellness)
    return wh.replace_daily_stats(conn, patient_id, start, end, rows, datetime.now(UTC))


def write_workouts(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: date,
    end: date,
    nearby: dict[str, list[dict]],
    failed: frozenset[str] = frozenset(),
) -> int:
    """Rebuild the patient's `wearable_workouts` for [start, end]: one row per workout document."""
    # A workout fetch that failed (or was skipped) left its raw rows as they were: rebuilt from those.
    rows = normalize.workout_rows(patient_id, _in_window(nearby, start, end)[WORKOUT])
    return wh.replace_workouts(conn, patient_id, start, end, rows, datetime.now(UTC))


def write_sessions(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: date,
    end: date,
    nearby: dict[str, list[dict]],
    failed: frozenset[str] = frozenset(),
) -> int:
    """Rebuild the patient's `wearable_sessions` for [start, end]: one row per session document."""
    rows = normalize.session_rows(patient_id, _in_window(nearby, start, end)[SESSION])
    return wh.replace_sessions(conn, patient_id, start, end, rows, datetime.now(UTC))


def _groups(patients: list[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [patients[i : i + size] for i in range(0, len(patients), size)]


def _rebuild_group(
    warehouse: wh.WarehouseAccess,
    purpose: str,
    group: list[str],
    rebuild_group: Callable[[duckdb.DuckDBPyConnection, list[str]], list[int]],
) -> list[int]:
    """Rebuild `group` in one transaction; the rows written per patient."""
    written: list[int] = []
    for attempt in warehouse.attempts(purpose):
        with attempt as conn:
            written = rebuild_group(conn, group)
    return written


def rebuild_per_patient(
    *,
    warehouse: wh.WarehouseAccess,
    table: str,
    write: Writer,
    start: date,
    end: date,
    run_id: str,
    patient_id: str | None = None,
    margin: timedelta = timedelta(0),
    purpose: str = "rebuild",
    progress: RunLog = log,
    day_status: bool = False,
    shard: Shard | None = None,
    group_size: int = GROUP_SIZE,
) -> RebuildOutcome:
    """Rebuild `table` over days [start, end] from the raw tables, `group_size` patients per transaction.

    Covers `patient_id`, or every patient with raw data in the window or a result in the run, and of those
    only the patients of `shard` when the run is one shard of several. Each patient's
    daily documents are read once, over the days widened by `margin`; `write` gets them all and picks the
    days itself. With `day_status`, the patient's `wearable_day_status` rows for the window are derived
    from the same documents and written in the same transaction (the last normalized table does this).
    A group whose transaction fails is rolled back and its patients rebuilt one per transaction, so one
    patient's failure (which fails the asset) costs the others nothing.
    """
    warehouse = warehouse.reporting_waits_to(progress)  # a long wait for the file shows in the run's log
    patients = patients_to_normalize(warehouse, start, end, patient_id, run_id, shard)

    def rebuild_group(conn: duckdb.DuckDBPyConnection, group: list[str]) -> list[int]:
        read = read_group_documents(conn, group, start, end, margin)
        return [rebuild_one(conn, patient, *read[patient]) for patient in group]

    def rebuild_one(
        conn: duckdb.DuckDBPyConnection,
        patient: str,
        nearby: dict[str, list[dict]],
        rejected: list[SyncError],
    ) -> int:
        report_rejected(conn, run_id, patient, rejected, progress)
        failed = fetch_failures(conn, run_id, patient)
        if failed:
            progress.warning(
                f"patient {patient}: {', '.join(sorted(failed))} could not be fetched in this run; "
                f"{table} keeps what earlier runs landed for them"
            )
        written = write(conn, patient, start, end, nearby, failed)
        rows = {table: written}
        if day_status:
            rows[DAY_STATUS_TABLE] = write_day_status(
                conn, patient_id=patient, start=start, end=end, run_id=run_id, nearby=nearby
            )
        ledger.add_rows(conn, run_id=run_id, patient_id=patient, rows=rows)
        return written

    total = 0
    done = 0
    for group in _groups(patients, lake_group_size(warehouse, group_size)):
        try:
            written = _rebuild_group(warehouse, f"{purpose}: write {table}", group, rebuild_group)
        except wh.WarehouseBusy:
            raise
        except Exception:
            if len(group) == 1:
                raise
            # One patient broke the group's transaction: each patient alone, so the others land and the
            # failing one raises on its own, as it would have.
            written = [
                _rebuild_group(warehouse, f"{purpose}: write {table}", [patient], rebuild_group)[0]
                for patient in group
            ]
        total += sum(written)
        done += len(group)
        if len(patients) > 20:
            progress.info(f"patient {done} of {len(patients)} ({group[-1]}): {written[-1]} rows")
    return RebuildOutcome(len(patients), total)
