"""What the webhook receiver reads and writes: the patient behind an Oura user id, a stored document's day,
a deleted document taken out of its raw table, the accepted events (`patient_graph.webhook_events`), and a
queued sync request an event can join instead of queuing another run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb

from oura_assets import domain
from oura_assets.domain import SOURCE, check_document_collection
from oura_assets.warehouse.dialect import insert_absent, updated
from oura_assets.warehouse.raw import SUPERSEDED
from oura_assets.warehouse.values import to_day, utc


def patient_for_oura_user(conn: duckdb.DuckDBPyConnection, oura_user_id: str) -> str | None:
    """The patient whose active connection is Oura user `oura_user_id`, or None.

    Only `active` connections: a disconnected patient's events are not theirs to sync any more.
    """
    row = conn.execute(
        "SELECT patient_id FROM patient_graph.wearable_connections "
        "WHERE source = ? AND oura_user_id = ? AND status = ? ORDER BY connected_at DESC NULLS LAST LIMIT 1",
        [SOURCE, oura_user_id, domain.ACTIVE],
    ).fetchone()
    return None if row is None else str(row[0])


def raw_document_day(
    conn: duckdb.DuckDBPyConnection, collection: str, patient_id: str, document_id: str
) -> date | None:
    """The `day` of a stored raw document, or None when the warehouse does not hold it."""
    table = f"oura_raw.{check_document_collection(collection)}"
    row = conn.execute(
        f"SELECT day FROM {table} WHERE patient_id = ? AND id = ?",  # noqa: S608 (checked constant)
        [patient_id, document_id],
    ).fetchone()
    return None if row is None else to_day(row[0])


def delete_raw_document(
    conn: duckdb.DuckDBPyConnection, collection: str, patient_id: str, document_id: str, at: datetime
) -> date | None:
    """Remove a document Oura deleted from its raw table, keeping the last version in
    `oura_raw.document_revisions` (`change = 'deleted'`, as the raw mirror does); returns its day, or None
    when it was not stored."""
    table = f"oura_raw.{check_document_collection(collection)}"
    day = raw_document_day(conn, collection, patient_id, document_id)
    if day is None:
        return None
    conn.execute(
        f"""
        INSERT INTO oura_raw.document_revisions BY NAME
        SELECT ? AS collection, patient_id, id, revision, day, document, fetched_at, ? AS superseded_at,
               'deleted' AS change
        FROM {table} t WHERE patient_id = ? AND id = ?
          AND NOT EXISTS ({SUPERSEDED.format(alias="t", revision="t.revision")})
        """,  # noqa: S608 (checked constant)
        [collection, utc(at), patient_id, document_id, collection, utc(at)],
    )
    conn.execute(f"DELETE FROM {table} WHERE patient_id = ? AND id = ?", [patient_id, document_id])  # noqa: S608
    return day


@dataclass(frozen=True)
class WebhookEventRecord:
    """A `patient_graph.webhook_events` row."""

    event_key: str
    patient_id: str
    event_type: str
    data_type: str
    object_id: str
    event_time: datetime | None
    action: str
    start_day: date | None = None
    end_day: date | None = None
    sync_id: str | None = None


def webhook_event_seen(conn: duckdb.DuckDBPyConnection, event_key: str) -> bool:
    """Whether the event was accepted before; if so, counts this redelivery."""
    return (
        updated(
            conn,
            "UPDATE patient_graph.webhook_events SET redeliveries = coalesce(redeliveries, 0) + 1 "
            "WHERE event_key = ?",
            [event_key],
        )
        > 0
    )


def record_webhook_event(
    conn: duckdb.DuckDBPyConnection, event: WebhookEventRecord, received_at: datetime
) -> None:
    insert_absent(
        conn,
        "patient_graph.webhook_events",
        (
            "event_key",
            "patient_id",
            "source",
            "event_type",
            "data_type",
            "object_id",
            "event_time",
            "received_at",
            "start_day",
            "end_day",
            "sync_id",
            "action",
            "redeliveries",
        ),
        [
            event.event_key,
            event.patient_id,
            SOURCE,
            event.event_type,
            event.data_type,
            event.object_id,
            None if event.event_time is None else utc(event.event_time),
            utc(received_at),
            event.start_day,
            event.end_day,
            event.sync_id,
            event.action,
            0,
        ],
        key=("event_key",),
    )


def queued_request_covering(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start_day: date, end_day: date, max_days: int = 14
) -> str | None:
    """A sync request of the patient that no run has claimed yet (`queued`, or reserved by the API's fast lane
    and not started: `running` without a run id) whose days cover [start, end], and span at most `max_days`.

    A phone sync announces several documents at once (sleep, daily sleep, readiness): they join one run. A
    long request (a new patient's 30-day initial sync, a backfill) is not joined: it may wait in the run queue
    behind the patient's other runs and take minutes, and the event is worth a short run of its own.
    """
    row = conn.execute(
        "SELECT sync_id FROM patient_graph.sync_requests WHERE patient_id = ? AND source = ? "
        "AND (status = ? OR (status = ? AND run_id IS NULL)) "
        "AND start_day <= ? AND end_day >= ? AND date_diff('day', start_day, end_day) < ? "
        "ORDER BY requested_at LIMIT 1",
        [patient_id, SOURCE, domain.QUEUED, domain.RUNNING, to_day(start_day), to_day(end_day), max_days],
    ).fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True)
class WebhookCoverage:
    """How many documents that appeared or changed since an instant no webhook event announced, by collection.

    `events` counts the webhook events accepted in the same period: zero with documents changing means the
    webhooks went silent (or were never subscribed)."""

    events: int
    changed: dict[str, int]
    unannounced: dict[str, int]


# What a patient's syncs land in the first day after connecting is history (the initial sync, the days the
# ring held), which no webhook ever announces: only later changes are the webhooks' to announce.
HISTORY_AFTER_CONNECT = timedelta(days=1)


def unannounced_documents(conn: duckdb.DuckDBPyConnection, since: datetime) -> WebhookCoverage:
    """Documents of active patients new or changed since `since` with no webhook event for their id
    (leaving out what landed in a patient's first day after connecting: `HISTORY_AFTER_CONNECT`)."""
    (events,) = conn.execute(
        "SELECT count(*) FROM patient_graph.webhook_events WHERE received_at >= ?", [utc(since)]
    ).fetchone() or (0,)
    changed: dict[str, int] = {}
    unannounced: dict[str, int] = {}
    for collection in domain.DOCUMENT_COLLECTIONS:
        total, missing = conn.execute(
            f"""
            SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (
                SELECT 1 FROM patient_graph.webhook_events e
                WHERE e.patient_id = d.patient_id AND e.data_type = ? AND e.object_id = d.id))
            FROM oura_raw.{collection} d
            JOIN patient_graph.wearable_connections c ON c.patient_id = d.patient_id AND c.status = ?
            WHERE d.last_changed_at >= ? AND d.last_changed_at >= c.connected_at + ?
            """,  # noqa: S608 (collection is a domain constant)
            [collection, domain.ACTIVE, utc(since), HISTORY_AFTER_CONNECT],
        ).fetchone() or (0, 0)
        changed[collection], unannounced[collection] = int(total), int(missing)
    return WebhookCoverage(int(events), changed, unannounced)


LOOKUP_FOUND = "document_found"
LOOKUP_NOT_FOUND = "document_404_range_fallback"


def narrow_to_document_day(
    conn: duckdb.DuckDBPyConnection, sync_id: str, object_id: str, day: date | None
) -> bool:
    """Record what the single-document fetch of an event's document found: its `day`, or nothing (None:
    Oura answered 404). The event's `action` says which, for the record. Returns whether the event's sync
    request was narrowed to that day: only while no run has claimed it and no other event has joined it
    (otherwise it keeps the days that cover them all)."""
    conn.execute(
        "UPDATE patient_graph.webhook_events SET action = ? WHERE sync_id = ? AND object_id = ?",
        [LOOKUP_FOUND if day is not None else LOOKUP_NOT_FOUND, sync_id, object_id],
    )
    (events,) = conn.execute(
        "SELECT count(*) FROM patient_graph.webhook_events WHERE sync_id = ?", [sync_id]
    ).fetchone() or (0,)
    if day is None or events > 1:
        return False
    narrowed = updated(  # a count, not RETURNING: DuckLake has none for UPDATE
        conn,
        "UPDATE patient_graph.sync_requests SET start_day = ?, end_day = ? WHERE sync_id = ? "
        "AND started_at IS NOT NULL AND run_id IS NULL",
        [to_day(day), to_day(day), sync_id],
    )
    if narrowed:
        conn.execute(
            "UPDATE patient_graph.webhook_events SET start_day = ?, end_day = ? WHERE sync_id = ?",
            [to_day(day), to_day(day), sync_id],
        )
    return narrowed > 0
