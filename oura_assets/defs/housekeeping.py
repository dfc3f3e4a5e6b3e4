"""The daily health-data housekeeping: raw heart-rate retention and, after an erasure, compaction.

One small job on its own schedule (04:30 UTC, after the 03:00 sync has had time to finish), RUNNING by
default and cheap when there is nothing to do:

- Retention: with `OURA_ASSETS_RAW_HEARTRATE_RETENTION_DAYS` set, raw heart-rate samples older than that are
  dropped (every patient) and the horizon recorded, so the daily stats keep the figures computed from them
  (`oura_assets.retention`). Unset, the step reports "retention off" and deletes nothing.
- Compaction: an erasure through the API removes the patient's rows at once, but DuckDB keeps deleted rows in
  the file's blocks; when an erasure happened since the last compaction the file is rewritten
  (`warehouse.compact`), so the erased bytes leave the disk within a day.

Both are recorded in `patient_graph.audit_log` (actor `operator`) and reported in the step's metadata.
"""

from collections.abc import Iterator

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.clock import utc_now
from oura_assets.config import RETENTION_VARIABLE, load_settings
from oura_assets.defs.assets import RAW_KEYS
from oura_assets.defs.resources import WarehouseResource
from oura_assets.retention import apply_heartrate_retention

HOUSEKEEPING_JOB_NAME = "health_data_housekeeping"


@dg.op(
    name="drop_old_samples_and_compact",
    description="Drop raw heart-rate samples past the retention horizon; compact the file after an erasure.",
)
def housekeeping_op(
    context: dg.OpExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetObservation | dg.Output]:
    store = warehouse.reporting_waits_to(context.log)  # a Warehouse: compaction rewrites its file
    days = load_settings().raw_heartrate_retention_days
    metadata: dict[str, dg.RawMetadataValue] = {}
    if days is None:
        context.log.info(f"retention off: {RETENTION_VARIABLE} is not set, raw heart-rate samples are kept")
        metadata["retention"] = f"off ({RETENTION_VARIABLE} unset)"
    else:
        cutoff, deleted = apply_heartrate_retention(store, days, utc_now(), context.run_id)
        context.log.info(f"dropped {deleted} raw heart-rate samples taken before {cutoff.isoformat()}")
        figures: dict[str, dg.RawMetadataValue] = {
            "retention_days": days,
            "cutoff": cutoff.isoformat(),
            "rows_deleted": deleted,
        }
        metadata.update(figures)
        yield dg.AssetObservation(asset_key=RAW_KEYS["heartrate"], metadata=figures)
    with store.connect("housekeeping: erasures pending compaction") as conn:
        pending = wh.erasure_pending_compaction(conn)
    if pending:
        entry = wh.AuditEntry(
            occurred_at=utc_now(),
            actor=wh.OPERATOR,
            action="compact",
            patient_id=None,
            outcome="ok",
            request_id=context.run_id,
        )
        compaction = wh.compact(store, audit=entry)
        context.log.info(
            f"compacted after an erasure: {compaction.bytes_before} -> {compaction.bytes_after} B"
        )
        metadata["compacted_bytes_before"] = compaction.bytes_before
        metadata["compacted_bytes_after"] = compaction.bytes_after
    metadata["compacted"] = pending
    yield dg.Output(None, metadata=metadata)


@dg.job(name=HOUSEKEEPING_JOB_NAME, description=__doc__.splitlines()[0] if __doc__ else None)
def housekeeping_job() -> None:
    housekeeping_op()


housekeeping_schedule = dg.ScheduleDefinition(
    name="health_data_housekeeping_daily",
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    job=housekeeping_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: raw heart-rate retention (a no-op reporting 'retention off' when unset) and "
    "compaction after an erasure.",
)
