"""The analytics snapshot asset: republish the read-only copy analysts use.

The copy itself is `oura_assets.analytics.publish_snapshot` (no Dagster); this module only wires it in.
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import duckdb
from pydantic import Field

from oura_assets import analytics
from oura_assets import warehouse as wh
from oura_assets.config import load_settings
from oura_assets.defs.assets import DAILY_STATS_KEY, SESSIONS_KEY, WEARABLE_DATA_KEY, WORKOUTS_KEY
from oura_assets.defs.previews import markdown_table
from oura_assets.defs.resources import WarehouseResource

ANALYTICS_GROUP = "analytics"
SNAPSHOT_KEY = dg.AssetKey([ANALYTICS_GROUP, "snapshot"])


class AnalyticsResource(dg.ConfigurableResource):
    """Where the read-only analytics snapshot is published (`OURA_ASSETS_ANALYTICS`)."""

    path: str = Field(description="Path of the snapshot DuckDB file (`OURA_ASSETS_ANALYTICS`).")


def _snapshot_metadata(report: analytics.SnapshotReport) -> dict[str, dg.MetadataValue]:
    table_rows = sorted(report.tables.items())
    return {
        "path": dg.MetadataValue.path(str(report.path)),
        "published_at": dg.MetadataValue.text(report.published_at.isoformat()),
        "rows": dg.MetadataValue.json(dict(table_rows)),
        "dagster/row_count": dg.MetadataValue.int(report.rows),
        "warehouse_lock_held_s": dg.MetadataValue.float(round(report.lock_held_s, 3)),
        "publish_s": dg.MetadataValue.float(round(report.elapsed_s, 3)),
        "mode": dg.MetadataValue.text(report.mode),
        "preview": dg.MetadataValue.md(
            "Tables in the snapshot (views: `daily_wide`, `hrv_7d`)\n\n"
            + markdown_table(["table", "rows"], table_rows)
        ),
    }


def build_analytics_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=SNAPSHOT_KEY,
        deps=[WEARABLE_DATA_KEY, DAILY_STATS_KEY, WORKOUTS_KEY, SESSIONS_KEY],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=ANALYTICS_GROUP,
        kinds={"duckdb"},
        output_required=False,
    )
    def snapshot(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, analytics_store: AnalyticsResource
    ) -> Iterator[dg.MaterializeResult]:
        """The read-only DuckDB file to query (`make sql`, or `duckdb.connect(path, read_only=True)`).

        The whole warehouse's patient data (every `patient_graph` and `oura_raw` table, without tokens or
        bookkeeping) plus the views `daily_wide` (one row per patient-day, one column per metric, the
        unit in its name) and `hrv_7d` (7-day HRV and resting heart rate). Replaced atomically after
        every sync run, so holding it open never delays the pipeline: you keep reading the copy you opened.

        It is partitioned like the assets it follows so it runs in the same single-run backfill. It always
        holds the whole warehouse, not one range: the previous snapshot is refreshed with the patient-days
        written since it was published (this run's days, and every sync result recorded since), so the cost
        follows what runs wrote rather than the history (`analytics_refresh`); the first snapshot, or one
        that cannot be refreshed, is a whole copy. A failed publication logs a warning and leaves the
        previous snapshot in place (the next one still carries this run's days: its sync results say so):
        the patients' data has landed, so the run (and their sync events) stay green.
        """
        run_id = context.run.run_id
        window = context.partition_time_window
        run_days = (window.start.date(), (window.end - timedelta(days=1)).date())
        try:
            report = analytics.publish_snapshot(
                warehouse,
                analytics_store.path,
                purpose=f"dagster run {run_id[:8]}",
                # The snapshot is as protected as the warehouse: the same key (a secret, read at run time).
                key=load_settings().warehouse_key,
                run_days=run_days,
                incremental=True,
            )
        except (wh.WarehouseBusy, duckdb.Error, OSError, TimeoutError) as exc:
            context.log.warning(f"analytics snapshot not published, the previous one stays: {exc}")
            return
        context.log.info(f"analytics snapshot published ({report.mode}): {report.path} ({report.rows} rows)")
        yield dg.MaterializeResult(metadata=_snapshot_metadata(report))

    return [snapshot]
