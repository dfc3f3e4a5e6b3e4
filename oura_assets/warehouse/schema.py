"""Every warehouse table, described once as data: the DDL is generated from it, and so can its documentation.

A table is its qualified name, a description, its columns (DuckDB type, whether NULL is allowed, a
description written for a data scientist and the unit where one matters) and its primary key. CONTRACT §5
is the specification; the bookkeeping tables (sync requests and results, OAuth states) are described the
same way. `migrations.py` creates the tables from `TABLES`, and the Dagster definitions can build a
`dg.TableSchema` from the same entries, so the Columns a user reads in the UI are the columns on disk.

`TABLES` is the one registry; the tables of the newer collections (workouts, sessions, collection status)
are described in `schema_collections.py`, and `Column` / `Table` themselves in `table_spec.py`.
"""

from __future__ import annotations

from oura_assets.domain import DOCUMENT_COLLECTIONS, HEARTRATE
from oura_assets.warehouse.schema_collections import (
    WEARABLE_COLLECTION_STATUS,
    WEARABLE_SESSIONS,
    WEARABLE_WORKOUTS,
    WELLNESS_COLUMNS,
)
from oura_assets.warehouse.table_spec import (
    DAY_COLUMN,
    PATIENT_ID_COLUMN,
    SOURCE_COLUMN,
    Column,
    Table,
    required,
)

SCHEMAS = ("patient_graph", "oura_raw")
_SCORE = "1-100 score"


REVISION_COLUMNS = (
    required("first_seen_at", "TIMESTAMPTZ", "When the document was first fetched (UTC)."),
    required(
        "last_changed_at",
        "TIMESTAMPTZ",
        "When Oura's content of the document last changed, i.e. when this version was first fetched (UTC).",
    ),
    required(
        "revision",
        "INTEGER",
        "Content changes seen: 0 for the first version, +1 each time Oura serves the same id with a "
        "different content (a re-fetch of identical content changes only `fetched_at`). The superseded "
        "versions are in `oura_raw.document_revisions`.",
        "changes",
    ),
)
"""The raw document tables' revision bookkeeping, added by migration 2 (so they come last on disk)."""


def _document_table(collection: str) -> Table:
    return Table(
        f"oura_raw.{collection}",
        f"Oura `{collection}` documents as Oura sent them, one row per patient and document id. A re-fetched "
        "document replaces its older version; a changed one keeps the old version in "
        "`oura_raw.document_revisions`.",
        (
            PATIENT_ID_COLUMN,
            required("id", "VARCHAR", "Oura's document id."),
            DAY_COLUMN,
            required("document", "JSON", "The document exactly as Oura returned it."),
            required("fetched_at", "TIMESTAMPTZ", "When this version was last fetched from Oura (UTC)."),
            *REVISION_COLUMNS,
        ),
        ("patient_id", "id"),
    )


WEBHOOK_EVENTS = Table(
    "patient_graph.webhook_events",
    "Oura webhook events the connection API accepted (signature valid, user known), one row per event: what "
    "makes a redelivery recognisable (Oura retries an event it thinks was not received), and what each "
    "event led to. Events for unknown users and events that failed verification are not stored.",
    (
        required(
            "event_key",
            "VARCHAR",
            "SHA-256 of (event_type, data_type, object_id, event_time, user_id): the same event redelivered "
            "has the same key.",
        ),
        PATIENT_ID_COLUMN,
        SOURCE_COLUMN,
        required("event_type", "VARCHAR", "Oura's operation: `create`, `update` or `delete`."),
        required("data_type", "VARCHAR", "Oura's data type the document belongs to (`daily_sleep`, ...)."),
        required("object_id", "VARCHAR", "The Oura document id the event is about."),
        Column("event_time", "TIMESTAMPTZ", "When Oura says the change happened (UTC)."),
        required("received_at", "TIMESTAMPTZ", "When the API first accepted the event (UTC)."),
        Column("start_day", "DATE", "First day of the sync the event queued (inclusive)."),
        Column("end_day", "DATE", "Last day of the sync the event queued (inclusive)."),
        Column("sync_id", "VARCHAR", "The sync request the event queued or joined; null when ignored."),
        required(
            "action",
            "VARCHAR",
            "What the API did: `sync_queued`, `deleted` (document removed from the raw table, its day "
            "queued for a sync) or `ignored` (a data type we do not ingest).",
        ),
        Column(
            "redeliveries", "INTEGER", "Times the same event arrived again after the first.", "deliveries"
        ),
    ),
    ("event_key",),
)

_TABLES: tuple[Table, ...] = (
    Table(
        "patient_graph.wearable_data",
        "One row per patient, source, metric type and day where Oura returned the documents it is built "
        "from. `metrics` holds CONTRACT §5's camelCase keys; a key is null when Oura gave null.",
        (
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            required("metric_type", "VARCHAR", "Which metrics: `readiness`, `sleep`, `activity` or `hrv`."),
            DAY_COLUMN,
            required(
                "metrics",
                "JSON",
                "The day's metrics by camelCase key; durations in seconds, scores 1-100, HRV in ms, "
                "heart rate in bpm, bedtimes as UTC ISO-8601 ending in `Z`.",
            ),
            required("synced_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
        ),
        ("patient_id", "source", "metric_type", "day"),
    ),
    Table(
        "patient_graph.patient_wearable_daily_stats",
        "One row per patient, source and day with any data: the day's headline figures side by side, heart "
        "rate over the patient's local calendar day.",
        (
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            DAY_COLUMN,
            Column("readiness_score", "INTEGER", "Oura readiness score.", _SCORE),
            Column("sleep_score", "INTEGER", "Oura daily sleep score.", _SCORE),
            Column("activity_score", "INTEGER", "Oura activity score.", _SCORE),
            Column(
                "total_sleep_seconds", "INTEGER", "Total sleep of the day's main sleep period.", "seconds"
            ),
            Column("steps", "INTEGER", "Steps counted over the day.", "steps"),
            Column("active_calories", "INTEGER", "Energy burned by activity.", "kcal"),
            Column("total_calories", "INTEGER", "Total energy burned, resting included.", "kcal"),
            Column("average_hrv", "DOUBLE", "Average HRV (RMSSD) of the main sleep period.", "ms"),
            Column(
                "resting_heart_rate",
                "INTEGER",
                "Lowest heart rate of the main sleep period (Oura `lowest_heart_rate`).",
                "bpm",
            ),
            Column("hr_min", "INTEGER", "Lowest heart-rate sample of the local day.", "bpm"),
            Column("hr_max", "INTEGER", "Highest heart-rate sample of the local day.", "bpm"),
            Column("hr_avg", "DOUBLE", "Mean of the local day's heart-rate samples.", "bpm"),
            Column(
                "hr_samples",
                "INTEGER",
                "Distinct heart-rate samples (by timestamp and source) in the local day.",
                "samples",
            ),
            Column(
                "utc_offset_minutes",
                "INTEGER",
                "The UTC offset the local day was cut with, from the day's documents or the nearest known.",
                "minutes",
            ),
            required("updated_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
            *WELLNESS_COLUMNS,
        ),
        ("patient_id", "source", "day"),
    ),
    Table(
        "patient_graph.patient_events",
        "Things that happened to a patient's wearable: connected, synced, reconnect required, disconnected.",
        (
            required("event_id", "VARCHAR", "Unique id; recording the same id again changes nothing."),
            PATIENT_ID_COLUMN,
            required(
                "event_type",
                "VARCHAR",
                "`wearable_connected`, `wearable_sync`, `wearable_reconnect_required` or "
                "`wearable_disconnected`.",
            ),
            SOURCE_COLUMN,
            required("occurred_at", "TIMESTAMPTZ", "When it happened (UTC)."),
            required(
                "payload",
                "JSON",
                "Details; a `wearable_sync` holds status, runId, startDay, endDay, rows per table, errors.",
            ),
        ),
        ("event_id",),
    ),
    Table(
        "patient_graph.wearable_connections",
        "One row per patient and source: the connection's state and its tokens, encrypted.",
        (
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            required("status", "VARCHAR", "`active`, `reconnect_required` or `disconnected`."),
            Column("oura_user_id", "VARCHAR", "The patient's user id at Oura, when known."),
            Column("scopes", "VARCHAR[]", "OAuth scopes the patient granted."),
            Column("access_token_enc", "VARCHAR", "The access token, encrypted (Fernet); never plaintext."),
            Column("refresh_token_enc", "VARCHAR", "The refresh token, encrypted (Fernet); never plaintext."),
            Column("expires_at", "TIMESTAMPTZ", "When the access token expires (UTC)."),
            Column("connected_at", "TIMESTAMPTZ", "When the patient last connected (UTC)."),
            Column("last_synced_at", "TIMESTAMPTZ", "When a sync last landed data (UTC)."),
            Column("last_error", "VARCHAR", "Why the last sync or refresh failed; null once one succeeds."),
            required("updated_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
        ),
        ("patient_id", "source"),
    ),
    Table(
        "patient_graph.sync_requests",
        "Syncs queued through the connection API (or by a webhook), turned into Dagster runs by a sensor.",
        (
            required("sync_id", "VARCHAR", "The id the API returned as `syncId`."),
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            required("start_day", "DATE", "First day to sync (inclusive)."),
            required("end_day", "DATE", "Last day to sync (inclusive)."),
            required("status", "VARCHAR", "`queued`, `running`, `success`, `partial` or `failed`."),
            required("requested_at", "TIMESTAMPTZ", "When it was queued (UTC)."),
            Column("run_id", "VARCHAR", "The Dagster run that carries it out."),
            Column("started_at", "TIMESTAMPTZ", "When its run started (UTC)."),
            Column("finished_at", "TIMESTAMPTZ", "When it ended (UTC); null until then."),
            Column("result", "JSON", "Its outcome: rows written per table and errors."),
        ),
        ("sync_id",),
    ),
    Table(
        "patient_graph.sync_results",
        "One row per run and patient: how that patient's sync went, rows written per table and errors.",
        (
            required("run_id", "VARCHAR", "The Dagster run."),
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            required("status", "VARCHAR", "`success`, `partial` or `failed`; only ever gets worse."),
            required("start_day", "DATE", "First day of the run's range (inclusive)."),
            required("end_day", "DATE", "Last day of the run's range (inclusive)."),
            required("rows", "JSON", "Rows written, by table name.", "rows"),
            required("errors", "JSON", "What went wrong: a list of {code, message, collection}."),
            required("recorded_at", "TIMESTAMPTZ", "When the result was last written (UTC)."),
            Column(
                "documents",
                "JSON",
                "Oura documents this patient's sync fetched, by what they were to the warehouse: "
                "{new, changed, unchanged, deleted}.",
                "documents",
            ),
        ),
        ("run_id", "patient_id"),
    ),
    Table(
        "patient_graph.oauth_states",
        "OAuth `state` values handed out by the connect route, by hash only: single-use, short-lived.",
        (
            required("state_hash", "VARCHAR", "SHA-256 of the state; the state itself is never stored."),
            PATIENT_ID_COLUMN,
            required("created_at", "TIMESTAMPTZ", "When it was handed out (UTC)."),
            required("expires_at", "TIMESTAMPTZ", "When it stops being accepted (UTC)."),
            Column("used_at", "TIMESTAMPTZ", "When it was spent (UTC); null while unused."),
        ),
        ("state_hash",),
    ),
    *(_document_table(collection) for collection in DOCUMENT_COLLECTIONS),
    Table(
        f"oura_raw.{HEARTRATE}",
        "Oura heart-rate samples as Oura sent them, one row per patient, instant and sample source.",
        (
            PATIENT_ID_COLUMN,
            required("timestamp", "TIMESTAMPTZ", "The sample's instant (UTC)."),
            required("source", "VARCHAR", "Oura's sample source: `awake`, `rest`, `sleep`, `session`, …"),
            Column("bpm", "INTEGER", "Heart rate.", "bpm"),
            required("document", "JSON", "The sample exactly as Oura returned it."),
            required("fetched_at", "TIMESTAMPTZ", "When this version was fetched from Oura (UTC)."),
        ),
        ("patient_id", "timestamp", "source"),
        # No PRIMARY KEY in the DuckDB file (migration 7): this table holds ~95 % of the warehouse's rows
        # (~320 samples per patient-day), and DuckDB's index for the key made it 5.5x the size on disk
        # (300 patients x 1 year: 1,303 MiB against 237), doubled the CPU of every insert and grew the
        # nightly run's cost with the history held. The writers keep the key as on a DuckLake.
        enforce_key=False,
    ),
    Table(
        "oura_raw.document_revisions",
        "Superseded versions of Oura documents: when Oura serves a document id with a changed content (a "
        "revised score) or stops serving it, the version the raw table held until then lands here. The "
        "current version stays in `oura_raw.<collection>`.",
        (
            required("collection", "VARCHAR", "The Oura collection: the raw table the document lives in."),
            PATIENT_ID_COLUMN,
            required("id", "VARCHAR", "Oura's document id."),
            required(
                "revision", "INTEGER", "The superseded version's `revision` (0: first version).", "changes"
            ),
            DAY_COLUMN,
            required("document", "JSON", "The superseded version exactly as Oura returned it."),
            required("fetched_at", "TIMESTAMPTZ", "When the superseded version was last fetched (UTC)."),
            required(
                "superseded_at", "TIMESTAMPTZ", "When the fetch that replaced or dropped it happened (UTC)."
            ),
            required(
                "change",
                "VARCHAR",
                "`changed` (Oura served a new content under the same id) or `deleted` (Oura no longer "
                "returned the document for its day).",
            ),
        ),
        ("collection", "patient_id", "id", "revision", "superseded_at"),
    ),
    WEBHOOK_EVENTS,
    WEARABLE_WORKOUTS,
    WEARABLE_SESSIONS,
    WEARABLE_COLLECTION_STATUS,
    Table(
        "patient_graph.wearable_day_status",
        "One row per patient, source and day of every synced range, complete days included: whether the "
        "day's data is complete and, when it is not, why (ring not worn, phone not synced yet, broken "
        "connection, expired membership, a failed fetch), in words in `reason`.",
        (
            PATIENT_ID_COLUMN,
            SOURCE_COLUMN,
            DAY_COLUMN,
            required(
                "status",
                "VARCHAR",
                "`complete` (readiness, sleep and activity all present), `partial` (some of them), "
                "`not_worn` (Oura recorded the ring off, or returned nothing for a past day), "
                "`awaiting_sync` (a recent day the phone has not synced yet), `reconnect_required`, "
                "`subscription_expired` or `error` (the fetch failed).",
            ),
            required("reason", "VARCHAR", "Why, in words a person can act on."),
            required("updated_at", "TIMESTAMPTZ", "When the row was last written (UTC)."),
        ),
        ("patient_id", "source", "day"),
    ),
)

AUDIT_LOG = Table(
    "patient_graph.audit_log",
    "Append-only: one row per connection-API call and per operator action on patient data (erasure, "
    "retention), successful or not. Who, what, on whose data, with what outcome, from where; never a token, "
    "code, state, JWT or health figure. An erasure removes the patient from every other table but leaves its "
    "own row here.",
    (
        required("audit_id", "VARCHAR", "Unique id of the entry."),
        required("occurred_at", "TIMESTAMPTZ", "When the action was answered or carried out (UTC)."),
        Column(
            "actor",
            "VARCHAR",
            "Who acted: the JWT `sub` of the caller, `operator` for a command or scheduled job, "
            "`anonymous` when the caller could not be identified.",
        ),
        required(
            "action",
            "VARCHAR",
            "`connect`, `callback`, `sync_request`, `sync_status`, `connections`, `disconnect`, `erase`, "
            "`retention`.",
        ),
        Column("patient_id", "VARCHAR", "Whose data the action touched; null when unknown or all patients."),
        required(
            "outcome", "VARCHAR", "`ok`, or the error code answered (`unauthorized`, `not_connected`, ...)."
        ),
        Column("status_code", "INTEGER", "The HTTP status answered; null for operator actions."),
        Column("client_address", "VARCHAR", "The caller's IP address as the API saw it; null for commands."),
        required(
            "request_id",
            "VARCHAR",
            "The request's id: the caller's `X-Request-Id` when well-formed, else ours.",
        ),
        Column(
            "detail",
            "JSON",
            "Counts only, never health data: rows removed per table by an erasure or retention, whether "
            "Oura revoked the grant.",
        ),
    ),
    ("audit_id",),
)
"""Kept apart by name: erasure removes a patient from every table with a `patient_id` column but this one."""

RETENTION_HORIZONS = Table(
    "patient_graph.retention_horizons",
    "How far back raw data is kept: the instant before which the retention job last dropped a raw table's "
    "rows. The daily-stats rebuild keeps the figures it computed before that instant instead of recomputing "
    "them from samples that are gone.",
    (
        required("table_name", "VARCHAR", "The raw table pruned, e.g. `oura_raw.heartrate`."),
        required("cutoff", "TIMESTAMPTZ", "Rows older than this instant were dropped (UTC)."),
        required("rows_deleted", "BIGINT", "Rows dropped by the latest pass.", "rows"),
        required("applied_at", "TIMESTAMPTZ", "When the latest pass ran (UTC)."),
    ),
    ("table_name",),
)

_TABLES = (*_TABLES, AUDIT_LOG, RETENTION_HORIZONS)

TABLES: dict[str, Table] = {table.name: table for table in _TABLES}
"""Every table of the warehouse by qualified name, in creation order."""

SCHEMA_VERSION_TABLE = Table(
    "main.schema_version",
    "The migrations applied to this file: one row per schema version.",
    (
        required("version", "INTEGER", "The schema version a migration brought the file to."),
        required("description", "VARCHAR", "What the migration did."),
        required("applied_at", "TIMESTAMPTZ", "When it was applied (UTC)."),
    ),
    ("version",),
)
"""The migrations' own bookkeeping, created before any migration runs (so not in `TABLES`)."""
