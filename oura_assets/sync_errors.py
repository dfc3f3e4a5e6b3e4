"""What a sync's failures are, and how fetched data is screened: the vocabulary `sync.py` decides with.

A failure's code says whose problem it is (the patient's, Oura's, ours) and what the run and the rebuild do
about it; the heart-rate screening says which samples can land. Kept apart from the orchestration in
`sync.py` so the rules can be read (and tested) on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from oura_assets import domain
from oura_assets.oura.client import (
    OuraError,
    OuraForbidden,
    OuraPayloadError,
    OuraRateLimited,
    OuraUnauthorized,
    OuraUnavailable,
    parse_instant,
)
from oura_assets.oura.heartrate_pages import BPM_MAX, BPM_MIN, HeartRateColumns

# Patient-side failures: the patient (or their Oura account) must act, not us. They leave the run green and
# surface in the connection's status, the sync event and the asset checks.
PATIENT_SIDE_CODES = frozenset({"reconnect_required", "subscription_expired", "forbidden", "scope_missing"})
# Oura could not answer (5xx, timeouts, dropped connections, 429 beyond the wait): worth another pass after a
# cool-down, and, when it survives every pass, Oura's outage rather than anything the patient did.
OURA_UNAVAILABLE_CODES = frozenset({"oura_unavailable", "rate_limited"})
# A collection's fetch failed (as opposed to documents screened out of a fetch that worked): the raw table
# still holds what an earlier run landed for it, and the rebuild must not present that gap as missing data.
FETCH_FAILURE_CODES = frozenset(
    {*OURA_UNAVAILABLE_CODES, "forbidden", "unauthorized", "bad_payload", "oura_error"}
)


@dataclass(frozen=True)
class SyncError:
    code: str
    message: str
    collection: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "collection": self.collection}


def sample_problem(sample: Any) -> str | None:
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
    if not BPM_MIN <= bpm <= BPM_MAX:
        return f"`bpm` is {bpm!r}, outside the range the warehouse stores ({BPM_MIN:,} to {BPM_MAX:,})"
    return None


def screen_samples(samples: list[Any]) -> tuple[list[dict[str, Any]], list[SyncError]]:
    """Split heart-rate samples into those that can land and one error summarising the rest (if any)."""
    good, problems = [], []
    for sample in samples:
        problem = sample_problem(sample)
        if problem is None:
            good.append(sample)
        else:
            problems.append(problem)
    if not problems:
        return good, []
    message = f"{len(problems)} heart-rate sample(s) left out; first: {problems[0]}"
    return good, [SyncError("rejected_document", message, "heartrate")]


def classify(error: OuraError, collection: str) -> SyncError:
    """The code for the client's error on one collection's fetch: whose problem it is follows from it."""
    if isinstance(error, OuraForbidden):
        # Oura answers 403 both for a missing scope and for an expired membership [spec]. A scope the
        # connection lacks is never asked for (`scope_missing`); of the rest, every collection forbidden is
        # the membership (`sync_patient`), one alone is that collection refused (`forbidden`).
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


def screen_columns(columns: HeartRateColumns) -> tuple[pa.Table, list[SyncError]]:
    """`screen_samples` for samples parsed into columns: the landable ones, and one error for the rest.

    The parse flagged the rejected samples (`landable`); only those few are read back into Python, so
    their reasons are worded by `sample_problem`, the rule every sample was screened by before.
    """
    landable = columns.landable()
    rejected = columns.rejected_documents()
    if not rejected:
        return landable, []
    problems = [sample_problem(sample) or "not landable" for sample in rejected]
    message = f"{len(problems)} heart-rate sample(s) left out; first: {problems[0]}"
    return landable, [SyncError("rejected_document", message, "heartrate")]


def sync_status(fetched: int, wanted: int, errors: Sequence[SyncError]) -> str:
    """A patient's sync status from the collections fetched and wanted: `success`, `partial` or `failed`.

    `wanted` and `errors` leave out the collections skipped for a scope the patient did not grant."""
    if fetched == 0:
        return "failed" if wanted or errors else "success"
    return "success" if fetched == wanted and not errors else "partial"


def scope_missing_error(collection: str, scope: str) -> SyncError:
    """A collection skipped because the patient did not grant its scope: their choice, so it is recorded in
    `wearable_collection_status` and the patient's sync is `success` without it."""
    return SyncError(
        "scope_missing",
        f"{collection} skipped: it needs the Oura `{scope}` scope, which this patient's connection was not "
        "granted (not requested, or unticked on Oura's consent page); the patient can grant it by "
        "reconnecting",
        collection,
    )


def forbidden_with_scope(error: SyncError, scope: str | None) -> SyncError:
    """A 403 on one collection whose scope the connection holds: Oura's other 403 [spec]."""
    why = (
        f"although the connection holds its `{scope}` scope (withdrawn at Oura since, or a feature the "
        "patient's Oura membership does not include)"
        if scope
        else "(scope or membership)"
    )
    return SyncError(
        "forbidden", f"Oura refused {error.collection} (403) {why}: {error.message}", error.collection
    )


def collection_statuses(
    wanted: Sequence[str], fetched: Iterable[str], errors: Sequence[SyncError]
) -> dict[str, tuple[str, str]]:
    """Each wanted collection's status and reason for `wearable_collection_status`, from the sync's errors."""
    by_collection: dict[str, SyncError] = {}
    expired = next((e for e in errors if e.code == "subscription_expired"), None)
    for error in errors:
        if error.collection and error.code != "rejected_document":
            by_collection.setdefault(error.collection, error)
    statuses: dict[str, tuple[str, str]] = {}
    landed = set(fetched)
    for collection in wanted:
        error = by_collection.get(collection)
        if collection in landed:
            statuses[collection] = (domain.COLLECTION_SYNCED, "fetched for the run's days")
        elif expired is not None:
            statuses[collection] = (
                domain.COLLECTION_SUBSCRIPTION_EXPIRED,
                f"not fetched: every collection answered 403, the patient's Oura membership has expired "
                f"({expired.message})",
            )
        elif error is not None and error.code == "scope_missing":
            statuses[collection] = (domain.COLLECTION_SCOPE_MISSING, error.message)
        elif error is not None and error.code == "forbidden":
            statuses[collection] = (domain.COLLECTION_FORBIDDEN, error.message)
        else:
            reason = f"{error.code}: {error.message}" if error is not None else "not fetched"
            statuses[collection] = (domain.COLLECTION_ERROR, reason)
    return statuses
