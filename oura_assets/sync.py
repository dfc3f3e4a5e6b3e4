"""Syncing patients over a day range: fetch from Oura, then mirror it into the raw tables.

Kept apart from Dagster so the fetch-and-land step and the run around it (a few patients at a time, one
patient's failure isolated from the others, the connection's status, the rule that decides whether the run
failed) can be tested, benchmarked and reused on their own; the raw asset only wires resources to
`sync_patients` and reports its `RunOutcome`.
All HTTP happens before the warehouse lock is taken; the writes for one patient land in one transaction, so
a patient is never half-written. Failures are classified here, because what a failure means for the run (the
patient's problem, or ours) is decided by its kind, not by where it was raised.
"""

from __future__ import annotations

import logging
import time as clock
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from oura_assets import warehouse as wh
from oura_assets.day_status_writer import write_day_status
from oura_assets.domain import RAW_COLLECTIONS
from oura_assets.oura.client import (
    OuraClient,
    OuraError,
    OuraForbidden,
    OuraPayloadError,
    OuraRateLimited,
    OuraUnauthorized,
    OuraUnavailable,
    parse_instant,
)
from oura_assets.tokens import ReconnectRequired

log = logging.getLogger(__name__)

# The raw tables' collections, in fetch order (domain.py owns the list).
ALL_COLLECTIONS = RAW_COLLECTIONS

# Patient-side failures: the patient (or their Oura account) must act, not us. They leave the run green and
# surface in the connection's status, the sync event and the asset checks.
PATIENT_SIDE_CODES = frozenset({"reconnect_required", "subscription_expired", "forbidden"})


@dataclass(frozen=True)
class SyncError:
    code: str
    message: str
    collection: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "collection": self.collection}


@dataclass
class PatientSyncResult:
    patient_id: str
    status: str  # success | partial | failed
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[SyncError] = field(default_factory=list)
    documents: dict[str, int] = field(default_factory=dict)
    """Documents fetched, by what they were to the warehouse: new, changed, unchanged, deleted."""

    @property
    def patient_side(self) -> bool:
        """True when every error is the patient's to fix (reconnect, membership, consent)."""
        return bool(self.errors) and all(e.code in PATIENT_SIDE_CODES for e in self.errors)


def heartrate_window(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC instants that cover local days [start, end] for any UTC offset (-12:00 to +14:00).

    Heart-rate samples are assigned to the patient's local calendar day later, once the day's offset is known
    from the daily documents, so the fetch has to cover a day on each side.
    """
    return (
        datetime.combine(start - timedelta(days=1), time(), tzinfo=UTC),
        datetime.combine(end + timedelta(days=2), time(), tzinfo=UTC),
    )


def _sample_problem(sample: Any) -> str | None:
    """Why a heart-rate sample cannot be landed, or None. `bpm` must be a whole number, `source` a string."""
    if not isinstance(sample, dict):
        return f"a {type(sample).__name__}, not an object"
    if parse_instant(sample.get("timestamp")) is None:
        return "no readable `timestamp`"
    if not isinstance(sample.get("source"), str):
        return "no `source`"
    bpm = sample.get("bpm")
    if isinstance(bpm, bool) or not isinstance(bpm, int | float) or bpm != bpm or float(bpm) % 1:
        return f"`bpm` is {bpm!r}, not a whole number"
    return None


def screen_samples(samples: list[Any]) -> tuple[list[dict[str, Any]], list[SyncError]]:
    """Split heart-rate samples into those that can land and one error summarising the rest (if any)."""
    good, problems = [], []
    for sample in samples:
        problem = _sample_problem(sample)
        if problem is None:
            good.append(sample)
        else:
            problems.append(problem)
    if not problems:
        return good, []
    message = f"{len(problems)} heart-rate sample(s) left out; first: {problems[0]}"
    return good, [SyncError("rejected_document", message, "heartrate")]


def _classify(error: OuraError, collection: str) -> SyncError:
    if isinstance(error, OuraForbidden):
        # Oura answers 403 both for a missing scope and for an expired membership [spec]; one collection
        # forbidden is a scope the patient did not grant, all of them is the membership.
        return SyncError("forbidden", error.message, collection)
    if isinstance(error, OuraUnauthorized):
        return SyncError("unauthorized", error.message, collection)
    if isinstance(error, OuraRateLimited):
        return SyncError("rate_limited", error.message, collection)
    if isinstance(error, OuraUnavailable):
        return SyncError("oura_unavailable", error.message, collection)
    if isinstance(error, OuraPayloadError):
        return SyncError("bad_payload", error.message, collection)
    return SyncError("oura_error", error.message, collection)


def _status(fetched: int, wanted: int, errors: Sequence[SyncError]) -> str:
    if fetched == 0:
        return "failed"
    return "success" if fetched == wanted and not errors else "partial"


def sync_patient(
    *,
    patient_id: str,
    client: OuraClient,
    warehouse: wh.Warehouse,
    start: date,
    end: date,
    collections: Iterable[str] = ALL_COLLECTIONS,
    purpose: str = "sync",
) -> PatientSyncResult:
    """Fetch `collections` for local days [start, end] and replace the patient's raw window with them."""
    wanted = [c for c in ALL_COLLECTIONS if c in set(collections)]
    fetched: dict[str, list[dict[str, Any]]] = {}
    errors: list[SyncError] = []
    for collection in wanted:
        try:
            if collection == "heartrate":
                fetched[collection], rejected = screen_samples(
                    client.heartrate(*heartrate_window(start, end))
                )
                errors.extend(rejected)
            else:
                batch = client.documents(collection, start, end)
                fetched[collection] = batch.documents
                errors.extend(
                    SyncError("rejected_document", rejected.reason, collection) for rejected in batch.rejected
                )
        except ReconnectRequired as exc:
            # The refresh token was refused: nothing more can be fetched for this patient until they
            # reconnect, and retrying would only spend requests. tokens.py has already flagged the connection.
            return PatientSyncResult(patient_id, "failed", {}, [SyncError("reconnect_required", str(exc))])
        except OuraError as exc:
            errors.append(_classify(exc, collection))

    forbidden = [e for e in errors if e.code == "forbidden"]
    if wanted and len(forbidden) == len(wanted):
        errors = [SyncError("subscription_expired", forbidden[0].message)]

    rows: dict[str, int] = {}
    changes = wh.DocumentChanges()
    if fetched:
        fetched_at = datetime.now(UTC)
        try:
            with warehouse.transaction(f"{purpose}: raw documents for one patient") as conn:
                for collection, documents in fetched.items():
                    if collection == "heartrate":
                        low, high = heartrate_window(start, end)
                        rows[f"oura_raw.{collection}"] = wh.replace_raw_heartrate(
                            conn, patient_id, low, high, documents, fetched_at
                        )
                    else:
                        written = wh.mirror_raw_documents(
                            conn, collection, patient_id, start, end, documents, fetched_at
                        )
                        rows[f"oura_raw.{collection}"] = written.written
                        changes += written
        except wh.WarehouseBusy as exc:
            return PatientSyncResult(
                patient_id, "failed", {}, [*errors, SyncError("warehouse_busy", str(exc))]
            )
    status = _status(len(fetched), len(wanted), errors)
    return PatientSyncResult(patient_id, status, rows, errors, changes.as_dict() if fetched else {})


class RunLog(Protocol):
    """Where a run's progress goes: a `logging.Logger`, or Dagster's `context.log` in an asset."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...

    def error(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class RunOutcome:
    """Every patient's result in a run, in the order they finished, and what they add up to."""

    results: list[PatientSyncResult]

    @property
    def patients(self) -> int:
        return len(self.results)

    @property
    def patients_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    @property
    def patients_ok(self) -> int:
        """Patients with data landed: `success` and `partial` alike."""
        return self.patients - self.patients_failed

    @property
    def patients_partial(self) -> int:
        return sum(r.status == "partial" for r in self.results)

    @property
    def failed_patients(self) -> dict[str, list[str]]:
        """Error codes of every patient that did not fully succeed, by patient id."""
        return {r.patient_id: [e.code for e in r.errors] for r in self.results if r.status != "success"}

    def rows(self, tables: Iterable[str]) -> dict[str, int]:
        """Rows written to each of `tables`, over all patients, by table name."""
        return {t: sum(r.rows.get(t, 0) for r in self.results) for t in sorted(tables)}

    @property
    def failure(self) -> str | None:
        """Why the run must fail, or None.

        Nobody landed and it is not the patients' doing (Oura down, warehouse locked): that is ours to see,
        so the run goes red. Patient-side failures (reconnect, membership) never fail a run.
        """
        infra_failures = [r for r in self.results if r.status == "failed" and not r.patient_side]
        if not self.results or len(infra_failures) < len(self.results):
            return None
        return f"all {len(self.results)} patient(s) failed; first: {infra_failures[0].errors[0]}"


def claim_patients(
    warehouse: wh.Warehouse, *, run_id: str, patient_id: str | None = None, sync_ids: Sequence[str] = ()
) -> list[str]:
    """The patients a run syncs (every active connection, or the one named), marking its sync requests
    `running` in the same transaction."""
    with warehouse.transaction("list patients for a sync run") as conn:
        patients = [c.patient_id for c in wh.list_active_connections(conn, patient_id)]
        for sync_id in sync_ids:
            wh.mark_sync_request(conn, sync_id, "running", run_id=run_id)
    return patients


def _record(warehouse: wh.Warehouse, run_id: str, result: PatientSyncResult, start: date, end: date) -> None:
    """Record a patient's result and what it says about the connection, in one transaction."""
    with warehouse.transaction("record a patient's sync result") as conn:
        wh.record_sync_result(
            conn,
            run_id=run_id,
            patient_id=result.patient_id,
            status=result.status,
            start_day=start,
            end_day=end,
            rows=result.rows,
            errors=[e.to_dict() for e in result.errors],
            documents=result.documents or None,
        )
        if not result.rows:
            # Nothing landed, and the normalized assets may not run at all (a run where every patient
            # failed is red): the patient's days are explained here, from what the warehouse already held.
            write_day_status(conn, patient_id=result.patient_id, start=start, end=end, run_id=run_id)
        if result.status != "failed":
            wh.mark_synced(conn, result.patient_id, datetime.now(UTC))
        elif result.errors and result.errors[0].code == "subscription_expired":
            wh.set_connection_status(
                conn, result.patient_id, "active", last_error="Oura membership expired (403)"
            )


def sync_patients(
    *,
    patients: Sequence[str],
    client_for: Callable[[str], OuraClient],
    warehouse: wh.Warehouse,
    start: date,
    end: date,
    run_id: str,
    collections: Iterable[str] = ALL_COLLECTIONS,
    max_workers: int = 4,
    purpose: str = "sync",
    progress: RunLog = log,
) -> RunOutcome:
    """Sync each of `patients` over local days [start, end], a few at a time, and record each one's result.

    One patient's failure, even an unexpected exception, is recorded for that patient (`internal_error`, with
    the traceback in `progress`) and never costs the others their sync. `client_for` builds a patient's Oura
    client; `purpose` names the run in the warehouse lock's holder.
    """
    collections = list(collections)
    progress.info(f"syncing {len(patients)} patient(s), days {start}..{end}, collections {collections}")

    def sync_one(patient_id: str) -> tuple[PatientSyncResult, float, str | None]:
        began = clock.monotonic()
        try:
            result = sync_patient(
                patient_id=patient_id,
                client=client_for(patient_id),
                warehouse=warehouse,
                start=start,
                end=end,
                collections=collections,
                purpose=purpose,
            )
            trace = None
        except Exception as exc:  # one patient's bug must not cost the others their sync
            result = PatientSyncResult(
                patient_id, "failed", {}, [SyncError("internal_error", type(exc).__name__)]
            )
            trace = traceback.format_exc()
        return result, clock.monotonic() - began, trace

    results: list[PatientSyncResult] = []
    workers = max(1, min(max_workers, len(patients)))
    # Patients are fetched a few at a time: a run is bound by Oura's latency, not by us. Their writes
    # still take turns at the warehouse lock, and Oura's 429s are waited out per Retry-After.
    with ThreadPoolExecutor(workers, thread_name_prefix="oura-patient") as pool:
        pending = [pool.submit(sync_one, patient_id) for patient_id in patients]
        for n, future in enumerate(as_completed(pending), start=1):
            result, took, trace = future.result()
            if trace:
                progress.error(f"patient {result.patient_id}: unexpected error\n{trace}")
            results.append(result)
            codes = ", ".join(e.code for e in result.errors) or "no errors"
            progress.info(
                f"patient {n} of {len(patients)} ({result.patient_id}): "
                f"{result.status} ({codes}), {sum(result.rows.values())} rows in {took:.1f}s"
            )
            _record(warehouse, run_id, result, start, end)
    return RunOutcome(results)
