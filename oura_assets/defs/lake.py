"""Nightly DuckLake maintenance: small files merged, old snapshots expired, unreferenced files deleted.

A DuckLake grows by a file (or inlined rows) per table per committed write: a nightly run writes a few rows
per patient and table, so the data path would gain thousands of small files a night, each a request on object
storage for every reader. The job runs DuckLake's own maintenance (`warehouse.maintain_lake`) at 05:00 UTC,
after the 03:00 sync and the 04:30 housekeeping, keeping `warehouse.KEEP_SNAPSHOTS` of time travel. On a
DuckDB file there is nothing to do and the step says so.
"""

from collections.abc import Iterator

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.defs.resources import WarehouseResource

LAKE_MAINTENANCE_JOB_NAME = "lake_maintenance"


@dg.op(
    name="merge_files_and_expire_snapshots",
    description="DuckLake: flush inlined rows, merge small files, expire old snapshots, delete old files.",
)
def lake_maintenance_op(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> Iterator[dg.Output]:
    store = warehouse.reporting_waits_to(context.log)
    if store.lake is None:
        context.log.info("the warehouse is a DuckDB file: no DuckLake maintenance to do")
        yield dg.Output(None, metadata={"maintenance": "not a DuckLake"})
        return
    done = wh.maintain_lake(store)
    context.log.info(
        f"DuckLake files {done.before.files} -> {done.after.files} "
        f"({done.inlined_rows_flushed} inlined rows flushed, {done.files_deleted} old files deleted)"
    )
    yield dg.Output(
        None,
        metadata={
            "files_before": done.before.files,
            "files_after": done.after.files,
            "data_bytes_after": done.after.data_bytes,
            "inlined_rows_flushed": done.inlined_rows_flushed,
            "snapshots_expired": done.snapshots_expired,
            "files_deleted": done.files_deleted,
            "keep_snapshots_days": wh.KEEP_SNAPSHOTS.days,
        },
    )


@dg.job(name=LAKE_MAINTENANCE_JOB_NAME, description=__doc__.splitlines()[0] if __doc__ else None)
def lake_maintenance_job() -> None:
    lake_maintenance_op()


lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_daily",
    cron_schedule="0 5 * * *",
    execution_timezone="UTC",
    job=lake_maintenance_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: DuckLake small files merged and old snapshots expired (a no-op on a DuckDB file).",
)
