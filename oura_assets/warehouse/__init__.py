"""The DuckDB warehouse: the tables of CONTRACT §5, the one door every process goes through, every
read and write.

Callers use it as `from oura_assets import warehouse as wh`: open a connection with `wh.Warehouse(path)
.transaction(purpose)` and compose the functions below (each takes that connection) in one transaction.
Tables are the public contract: writes are idempotent (primary keys, a window replaced by delete-then-upsert)
and values always travel as parameters. The modules, by what they own:

- `lock`: the cross-process writer lock and `WarehouseBusy`, which names the holder.
- `database`: `Warehouse`, opening DuckDB under that lock (`connect` / `transaction`).
- `encryption`, `rekey`: the encrypted file (`OURA_ASSETS_WAREHOUSE_KEY`), `open_database`, key rotation.
- `schema`: every table described once as data (`TABLES`); `migrations` creates them from it.
- `staging`: bulk rows staged as JSON and mirrored into a window.
- `raw`, `normalized`: the `oura_raw` tables, `wearable_data` and the daily stats.
- `connections`, `runs`, `oauth_states`: connections and tokens; sync requests, results and events; states.
- `queries`: the named queries behind the asset checks.
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
from oura_assets.warehouse.database import Warehouse
from oura_assets.warehouse.encryption import (
    NotEncrypted,
    WarehouseKeyError,
    attach,
    is_encrypted,
    open_database,
)
from oura_assets.warehouse.lock import DEFAULT_RETRY_AFTER_S, WarehouseBusy, WarehouseHolder
from oura_assets.warehouse.migrations import SCHEMA_VERSION
from oura_assets.warehouse.migrations import _migrate as _migrate
from oura_assets.warehouse.normalized import _DAILY_STATS_COLUMNS as _DAILY_STATS_COLUMNS
from oura_assets.warehouse.normalized import replace_daily_stats, replace_wearable_data
from oura_assets.warehouse.oauth_states import consume_oauth_state, purge_oauth_states, save_oauth_state
from oura_assets.warehouse.queries import (
    ConnectionAttention,
    MetricKeyShape,
    connections_needing_attention,
    daily_stats_mismatched_days,
    wearable_data_key_shapes,
)
from oura_assets.warehouse.raw import (
    patients_with_raw_data,
    read_raw_documents,
    read_raw_heartrate,
    replace_raw_documents,
    replace_raw_heartrate,
)
from oura_assets.warehouse.rekey import RekeyResult, rekey
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
    sync_results_for_run,
)
from oura_assets.warehouse.schema import TABLES, Column, Table

__all__ = [
    "CONNECTION_STATUSES",
    "DEFAULT_RETRY_AFTER_S",
    "DOCUMENT_COLLECTIONS",
    "EVENT_TYPES",
    "RAW_COLLECTIONS",
    "SCHEMA_VERSION",
    "SOURCE",
    "SYNC_REQUEST_STATUSES",
    "SYNC_RESULT_STATUSES",
    "TABLES",
    "Column",
    "ConnectionAttention",
    "ConnectionRecord",
    "MetricKeyShape",
    "NotEncrypted",
    "RekeyResult",
    "SyncRequestRecord",
    "SyncResultRecord",
    "Table",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseHolder",
    "WarehouseKeyError",
    "add_sync_result_rows",
    "attach",
    "connections_needing_attention",
    "consume_oauth_state",
    "create_sync_request",
    "daily_stats_mismatched_days",
    "delete_tokens",
    "get_connection",
    "get_sync_request",
    "is_encrypted",
    "list_active_connections",
    "list_connections",
    "mark_sync_request",
    "mark_synced",
    "open_database",
    "patients_with_raw_data",
    "purge_oauth_states",
    "queued_sync_requests",
    "read_raw_documents",
    "read_raw_heartrate",
    "record_event",
    "record_sync_result",
    "rekey",
    "replace_daily_stats",
    "replace_raw_documents",
    "replace_raw_heartrate",
    "replace_wearable_data",
    "save_oauth_state",
    "save_tokens",
    "set_connection_status",
    "sync_results_for_run",
    "upsert_connection",
    "wearable_data_key_shapes",
]
