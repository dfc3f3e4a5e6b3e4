"""The DuckDB warehouse: the tables of CONTRACT §5, the one door every process goes through, every
read and write.

Callers use it as `from oura_assets import warehouse as wh`: open a connection with `wh.Warehouse(path)
.transaction(purpose)` and compose the functions below (each takes that connection) in one transaction.
Tables are the public contract: writes are idempotent (primary keys, a window replaced by delete-then-upsert)
and values always travel as parameters. The modules, by what they own:

- `lock`: the cross-process writer lock and `WarehouseBusy`, which names the holder.
- `database`: `Warehouse`, opening DuckDB under that lock (`connect` / `transaction`, and `attempts` for
  writers that may run beside others); `WarehouseAccess`, the shape callers take (a `Warehouse` or the
  Dagster resource).
- `lake`, `dialect`: the DuckLake backend (catalog in PostgreSQL, no writer lock, optimistic commits) and the
  keyed writes that keep their guarantees on both backends.
- `encryption`, `rekey`: the encrypted file (`OURA_ASSETS_WAREHOUSE_KEY`), `open_database`, key rotation.
- `schema`: every table described once as data (`TABLES`), with `schema_collections` (the newer collections'
  tables) and `table_spec` (`Column`, `Table`); `migrations` creates them from it.
- `staging`: bulk rows staged as JSON and mirrored into a window (`replace_day_window`: the normalized ones).
- `raw`, `normalized`: the `oura_raw` tables (with document revisions), `wearable_data` and the daily stats.
- `day_status`: `wearable_day_status`, why each synced patient-day has the data it has.
- `activities`: `wearable_workouts` and `wearable_sessions`, one row per Oura document.
- `collection_status`: `wearable_collection_status`, whether each patient's collection synced and why not.
- `connections`, `runs`, `oauth_states`: connections and tokens; sync requests, results and events; states.
- `queries`: the named queries behind the asset checks.
- `audit`: the append-only audit log; `erasure`: a patient erased from every table, the file compacted;
  `retention`: raw heart-rate samples dropped past the retention horizon.
- `webhooks`: what the webhook receiver needs (accepted events, a user's patient, a deleted document).
"""

from oura_assets.domain import (
    CONNECTION_STATUSES,
    DOCUMENT_COLLECTIONS,
    EVENT_TYPES,
    RAW_COLLECTIONS,
    SOURCE,
    SYNC_REQUEST_STATUSES,
    SYNC_RESULT_STATUSES,
)
from oura_assets.warehouse.activities import replace_sessions, replace_workouts
from oura_assets.warehouse.audit import (
    ANONYMOUS,
    OPERATOR,
    AuditEntry,
    erasure_pending_compaction,
    read_audit_log,
    record_audit,
)
from oura_assets.warehouse.collection_status import (
    CollectionStatus,
    read_collection_status,
    replace_collection_status,
)
from oura_assets.warehouse.connections import (
    ConnectionRecord,
    delete_tokens,
    get_connection,
    list_active_connections,
    list_connections,
    mark_synced,
    save_tokens,
    set_connection_status,
    upsert_connection,
)
from oura_assets.warehouse.database import CONFLICT_ATTEMPTS, Warehouse, WarehouseAccess, WarehouseConflict
from oura_assets.warehouse.day_status import read_day_status, replace_day_status
from oura_assets.warehouse.encryption import (
    NotEncrypted,
    WarehouseKeyError,
    attach,
    is_encrypted,
    open_database,
)
from oura_assets.warehouse.erasure import Compaction, compact, erase_patient_rows, patient_tables
from oura_assets.warehouse.lake import (
    DATA_PATH_VARIABLE,
    LakeError,
    LakeLocation,
    attach_lake,
    is_lake,
    is_lake_connection,
    lake_location,
    load_extensions,
)
from oura_assets.warehouse.lake_maintenance import (
    KEEP_SNAPSHOTS,
    LakeFiles,
    LakeMaintenance,
    lake_files,
    maintain_lake,
)
from oura_assets.warehouse.lake_migrate import Migration, MigrationRefused, migrate_to_lake
from oura_assets.warehouse.lock import DEFAULT_RETRY_AFTER_S, WarehouseBusy, WarehouseHolder
from oura_assets.warehouse.migrations import SCHEMA_VERSION
from oura_assets.warehouse.migrations import _migrate as _migrate
from oura_assets.warehouse.normalized import _DAILY_STATS_COLUMNS as _DAILY_STATS_COLUMNS
from oura_assets.warehouse.normalized import (
    DailyHeartRate,
    read_daily_heart_rate,
    replace_daily_stats,
    replace_wearable_data,
)
from oura_assets.warehouse.oauth_states import consume_oauth_state, purge_oauth_states, save_oauth_state
from oura_assets.warehouse.previews import PREVIEW_COLUMNS, Preview, preview_rows
from oura_assets.warehouse.queries import (
    BPM_RANGE,
    DAY_STATUS_TABLE,
    MAX_OFFENDERS,
    SCORE_RANGE,
    SCORED_COLLECTIONS,
    SLEEP_SUM_TOLERANCE_S,
    ConnectionAttention,
    MetricKeyShape,
    Offender,
    Offenders,
    RunSyncErrors,
    RunWindow,
    SyncErrorFound,
    connections_needing_attention,
    daily_stats_heartrate_out_of_range,
    daily_stats_mismatched_days,
    daily_stats_scores_out_of_range,
    days_without_data_or_status,
    duplicate_keys,
    primary_key_enforced,
    raw_heartrate_out_of_range,
    raw_scores_out_of_range,
    raw_sleep_period_problems,
    spans_out_of_order,
    sync_errors_in_run,
    wearable_data_bedtimes_out_of_order,
    wearable_data_key_shapes,
    wearable_data_scores_out_of_range,
    wearable_data_sleep_duration_problems,
)
from oura_assets.warehouse.queue_signal import (
    signal_sync_queued,
    sync_queue_signal_path,
    sync_queue_stamp,
)
from oura_assets.warehouse.raw import (
    DocumentChanges,
    mirror_raw_documents,
    patients_with_raw_data,
    read_raw_documents,
    read_raw_documents_of,
    read_raw_heartrate,
    replace_raw_documents,
    replace_raw_heartrate,
    replace_raw_heartrate_columns,
    stored_heartrate_counts,
)
from oura_assets.warehouse.rekey import RekeyResult, rekey
from oura_assets.warehouse.retention import (
    RAW_HEARTRATE,
    daily_heart_rate_figures,
    prune_raw_heartrate,
    retention_horizon,
)
from oura_assets.warehouse.runs import (
    SyncRequestRecord,
    SyncResultRecord,
    add_sync_result_rows,
    create_sync_request,
    get_sync_request,
    mark_sync_request,
    queued_sync_requests,
    record_event,
    record_sync_result,
    sync_result,
    sync_results_for_run,
)
from oura_assets.warehouse.schema import AUDIT_LOG, TABLES
from oura_assets.warehouse.table_spec import Column, Table
from oura_assets.warehouse.waits import WaitLog
from oura_assets.warehouse.webhooks import (
    LOOKUP_FOUND,
    LOOKUP_NOT_FOUND,
    WebhookCoverage,
    WebhookEventRecord,
    delete_raw_document,
    narrow_to_document_day,
    patient_for_oura_user,
    queued_request_covering,
    raw_document_day,
    record_webhook_event,
    unannounced_documents,
    webhook_event_seen,
)

__all__ = [
    "ANONYMOUS",
    "AUDIT_LOG",
    "BPM_RANGE",
    "CONFLICT_ATTEMPTS",
    "CONNECTION_STATUSES",
    "DATA_PATH_VARIABLE",
    "DAY_STATUS_TABLE",
    "DEFAULT_RETRY_AFTER_S",
    "DOCUMENT_COLLECTIONS",
    "EVENT_TYPES",
    "KEEP_SNAPSHOTS",
    "LOOKUP_FOUND",
    "LOOKUP_NOT_FOUND",
    "MAX_OFFENDERS",
    "OPERATOR",
    "PREVIEW_COLUMNS",
    "RAW_COLLECTIONS",
    "RAW_HEARTRATE",
    "SCHEMA_VERSION",
    "SCORED_COLLECTIONS",
    "SCORE_RANGE",
    "SLEEP_SUM_TOLERANCE_S",
    "SOURCE",
    "SYNC_REQUEST_STATUSES",
    "SYNC_RESULT_STATUSES",
    "TABLES",
    "AuditEntry",
    "CollectionStatus",
    "Column",
    "Compaction",
    "ConnectionAttention",
    "ConnectionRecord",
    "DailyHeartRate",
    "DocumentChanges",
    "LakeError",
    "LakeFiles",
    "LakeLocation",
    "LakeMaintenance",
    "MetricKeyShape",
    "Migration",
    "MigrationRefused",
    "NotEncrypted",
    "Offender",
    "Offenders",
    "Preview",
    "RekeyResult",
    "RunSyncErrors",
    "RunWindow",
    "SyncErrorFound",
    "SyncRequestRecord",
    "SyncResultRecord",
    "Table",
    "WaitLog",
    "Warehouse",
    "WarehouseAccess",
    "WarehouseBusy",
    "WarehouseConflict",
    "WarehouseHolder",
    "WarehouseKeyError",
    "WebhookCoverage",
    "WebhookEventRecord",
    "add_sync_result_rows",
    "attach",
    "attach_lake",
    "compact",
    "connections_needing_attention",
    "consume_oauth_state",
    "create_sync_request",
    "daily_heart_rate_figures",
    "daily_stats_heartrate_out_of_range",
    "daily_stats_mismatched_days",
    "daily_stats_scores_out_of_range",
    "days_without_data_or_status",
    "delete_raw_document",
    "delete_tokens",
    "duplicate_keys",
    "erase_patient_rows",
    "erasure_pending_compaction",
    "get_connection",
    "get_sync_request",
    "is_encrypted",
    "is_lake",
    "is_lake_connection",
    "lake_files",
    "lake_location",
    "list_active_connections",
    "list_connections",
    "load_extensions",
    "maintain_lake",
    "mark_sync_request",
    "mark_synced",
    "migrate_to_lake",
    "mirror_raw_documents",
    "narrow_to_document_day",
    "open_database",
    "patient_for_oura_user",
    "patient_tables",
    "patients_with_raw_data",
    "preview_rows",
    "primary_key_enforced",
    "prune_raw_heartrate",
    "purge_oauth_states",
    "queued_request_covering",
    "queued_sync_requests",
    "raw_document_day",
    "raw_heartrate_out_of_range",
    "raw_scores_out_of_range",
    "raw_sleep_period_problems",
    "read_audit_log",
    "read_collection_status",
    "read_daily_heart_rate",
    "read_day_status",
    "read_raw_documents",
    "read_raw_documents_of",
    "read_raw_heartrate",
    "record_audit",
    "record_event",
    "record_sync_result",
    "record_webhook_event",
    "rekey",
    "replace_collection_status",
    "replace_daily_stats",
    "replace_day_status",
    "replace_raw_documents",
    "replace_raw_heartrate",
    "replace_raw_heartrate_columns",
    "replace_sessions",
    "replace_wearable_data",
    "replace_workouts",
    "retention_horizon",
    "save_oauth_state",
    "save_tokens",
    "set_connection_status",
    "signal_sync_queued",
    "spans_out_of_order",
    "stored_heartrate_counts",
    "sync_errors_in_run",
    "sync_queue_signal_path",
    "sync_queue_stamp",
    "sync_result",
    "sync_results_for_run",
    "unannounced_documents",
    "upsert_connection",
    "wearable_data_bedtimes_out_of_order",
    "wearable_data_key_shapes",
    "wearable_data_scores_out_of_range",
    "wearable_data_sleep_duration_problems",
    "webhook_event_seen",
]
