"""The project's vocabulary and the rules on it, in one place: plain values and functions, no I/O, no SQL.

The same words (the source name, the Oura collections we ingest, the statuses a connection or a sync can
be in, the events we record) are used by the warehouse, the sync, the normalizers, the API and the Dagster
definitions. Each is defined here once, so a new status or collection is added in one place, and rules such
as "a sync status only gets worse" are tested as plain functions instead of hiding inside SQL helpers.
"""

from __future__ import annotations

SOURCE = "oura"
"""The only wearable source this project writes: the `source` column of every patient-graph table."""

CORE_COLLECTIONS = ("daily_readiness", "daily_sleep", "sleep", "daily_activity")
"""The collections a day's completeness is judged by (`wearable_day_status`); `wearable_data` is built from
them."""

WORKOUT = "workout"
SESSION = "session"
WELLNESS_COLLECTIONS = ("daily_spo2", "daily_stress", "daily_resilience", "daily_cardiovascular_age")
"""Daily summaries whose headline figures are columns of `patient_wearable_daily_stats`."""

DOCUMENT_COLLECTIONS = (*CORE_COLLECTIONS, WORKOUT, SESSION, *WELLNESS_COLLECTIONS)
"""Oura collections of documents keyed by `id` and dated by `day`; each has an `oura_raw` table."""

HEARTRATE = "heartrate"
"""Oura's heart-rate time series, keyed by (timestamp, source) rather than by document id."""

RAW_COLLECTIONS = (*DOCUMENT_COLLECTIONS, HEARTRATE)
"""Every collection we ingest, in fetch order: one `oura_raw` table each."""

COLLECTION_SCOPES = {
    **dict.fromkeys(CORE_COLLECTIONS, "daily"),
    WORKOUT: "workout",
    SESSION: "session",
    "daily_spo2": "spo2Daily",
    "daily_stress": "daily",
    "daily_resilience": "daily",
    "daily_cardiovascular_age": "daily",
    HEARTRATE: "heartrate",
}
"""The OAuth scope Oura requires for each collection we ingest [spec: scopes `daily heartrate workout session
spo2Daily`]. A patient who did not grant one gets Oura's 403 on that collection alone."""

COLLECTION_SYNCED = "synced"
COLLECTION_SCOPE_MISSING = "scope_missing"
COLLECTION_SUBSCRIPTION_EXPIRED = "subscription_expired"
COLLECTION_FORBIDDEN = "forbidden"
COLLECTION_ERROR = "error"
COLLECTION_STATUSES = (
    COLLECTION_SYNCED,
    COLLECTION_SCOPE_MISSING,
    COLLECTION_SUBSCRIPTION_EXPIRED,
    COLLECTION_FORBIDDEN,
    COLLECTION_ERROR,
)
"""`wearable_collection_status.status`: whether a patient's collection synced in their latest run, and if not,
why: the patient did not grant its scope, their Oura membership expired (every collection answered 403),
Oura refused it for another reason (403 on a granted scope), or the fetch failed."""


def missing_scope(collection: str, granted: tuple[str, ...] | None) -> str | None:
    """The scope `collection` needs that `granted` lacks; None when it has it or the grant is unknown."""
    scope = COLLECTION_SCOPES.get(collection)
    if scope is None or granted is None:
        return None
    return None if scope in granted else scope


ACTIVE = "active"
RECONNECT_REQUIRED = "reconnect_required"
DISCONNECTED = "disconnected"
CONNECTION_STATUSES = frozenset({ACTIVE, RECONNECT_REQUIRED, DISCONNECTED})
"""CONTRACT §5, `wearable_connections.status`."""

QUEUED = "queued"
RUNNING = "running"
SUCCESS = "success"
PARTIAL = "partial"
FAILED = "failed"
SYNC_RESULT_STATUSES = (SUCCESS, PARTIAL, FAILED)
"""How a patient's sync ended, from best to worst (CONTRACT §5, the `wearable_sync` event's status)."""
SYNC_REQUEST_STATUSES = frozenset({QUEUED, RUNNING, *SYNC_RESULT_STATUSES})
"""CONTRACT §3, `GET /sync/{syncId}`: a queued request runs, then ends as one of the result statuses."""
TERMINAL_SYNC_STATUSES = frozenset(SYNC_RESULT_STATUSES)

WEARABLE_CONNECTED = "wearable_connected"
WEARABLE_SYNC = "wearable_sync"
WEARABLE_RECONNECT_REQUIRED = "wearable_reconnect_required"
WEARABLE_DISCONNECTED = "wearable_disconnected"
EVENT_TYPES = frozenset(
    {WEARABLE_CONNECTED, WEARABLE_SYNC, WEARABLE_RECONNECT_REQUIRED, WEARABLE_DISCONNECTED}
)
"""CONTRACT §5, `patient_events.event_type`."""


def check_connection_status(status: str) -> str:
    """`status` if it is a connection status; otherwise ValueError naming the ones there are."""
    if status not in CONNECTION_STATUSES:
        raise ValueError(
            f"unknown connection status {status!r}; expected one of {sorted(CONNECTION_STATUSES)}"
        )
    return status


def check_sync_request_status(status: str) -> str:
    """`status` if a sync request can be in it; otherwise ValueError."""
    if status not in SYNC_REQUEST_STATUSES:
        raise ValueError(f"unknown sync status {status!r}; expected one of {sorted(SYNC_REQUEST_STATUSES)}")
    return status


def check_sync_result_status(status: str) -> str:
    """`status` if a patient's sync can end in it; otherwise ValueError."""
    if status not in SYNC_RESULT_STATUSES:
        raise ValueError(f"unknown sync result status {status!r}; expected one of {SYNC_RESULT_STATUSES}")
    return status


def check_event_type(event_type: str) -> str:
    """`event_type` if it is one we record; otherwise ValueError."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; expected one of {sorted(EVENT_TYPES)}")
    return event_type


def check_document_collection(collection: str) -> str:
    """`collection` if it is an Oura document collection we store; otherwise ValueError."""
    if collection not in DOCUMENT_COLLECTIONS:
        raise ValueError(
            f"unknown Oura document collection {collection!r}; expected one of {DOCUMENT_COLLECTIONS}"
        )
    return collection


def worse_sync_status(first: str, second: str) -> str:
    """The worse of two sync result statuses: a sync status only gets worse (success → partial → failed).

    A patient's result in one run is recorded in parts (the raw sync, then each normalized table); a part
    that failed must not be hidden by a later part that succeeded.
    """
    check_sync_result_status(first)
    check_sync_result_status(second)
    return max(first, second, key=SYNC_RESULT_STATUSES.index)


def is_terminal_sync_status(status: str) -> bool:
    """True when a sync request in `status` has finished (success, partial or failed)."""
    return check_sync_request_status(status) in TERMINAL_SYNC_STATUSES


def takes_refreshed_tokens(connection_status: str) -> bool:
    """Whether a refreshed token pair may be stored on a connection in this status.

    Not on a disconnected one: the patient's disconnect must win over a refresh in flight when it happened.
    """
    return check_connection_status(connection_status) != DISCONNECTED


def needs_attention(connection_status: str, last_error: str | None) -> bool:
    """Whether the patient must act on this connection: reconnect, or fix what the last sync hit (a 403)."""
    status = check_connection_status(connection_status)
    return status == RECONNECT_REQUIRED or (status == ACTIVE and last_error is not None)


DAY_COMPLETE = "complete"
DAY_PARTIAL = "partial"
DAY_NOT_WORN = "not_worn"
DAY_AWAITING_SYNC = "awaiting_sync"
DAY_RECONNECT_REQUIRED = "reconnect_required"
DAY_SUBSCRIPTION_EXPIRED = "subscription_expired"
DAY_ERROR = "error"
DAY_STATUSES = (
    DAY_COMPLETE,
    DAY_PARTIAL,
    DAY_NOT_WORN,
    DAY_AWAITING_SYNC,
    DAY_RECONNECT_REQUIRED,
    DAY_SUBSCRIPTION_EXPIRED,
    DAY_ERROR,
)
"""CONTRACT §5, `wearable_day_status.status`: why a patient-day has the data it has (`day_status.py`)."""


def check_day_status(status: str) -> str:
    """`status` if a patient-day can be in it; otherwise ValueError naming the ones there are."""
    if status not in DAY_STATUSES:
        raise ValueError(f"unknown day status {status!r}; expected one of {DAY_STATUSES}")
    return status
