"""One patient's sync over a day range: fetch from Oura, then mirror it into the raw tables.

Kept apart from Dagster so the fetch-and-land step can be tested, benchmarked and reused on its own.
All HTTP happens before the warehouse lock is taken; the writes for one patient land in one transaction, so
a patient is never half-written. Failures are classified here, because what a failure means for the run (the
patient's problem, or ours) is decided by its kind, not by where it was raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from oura_assets import warehouse as wh
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
                        rows[f"oura_raw.{collection}"] = wh.replace_raw_documents(
                            conn, collection, patient_id, start, end, documents, fetched_at
                        )
        except wh.WarehouseBusy as exc:
            return PatientSyncResult(
                patient_id, "failed", {}, [*errors, SyncError("warehouse_busy", str(exc))]
            )
    return PatientSyncResult(patient_id, _status(len(fetched), len(wanted), errors), rows, errors)
