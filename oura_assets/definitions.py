"""Dagster entry point (`workspace.yaml`, `dagster asset materialize -m oura_assets.definitions`).

Thin on purpose: it only assembles what `oura_assets.defs` builds. Loading is deferred to Dagster
(`@dg.definitions`), so settings such as `OURA_ASSETS_START_DATE` are read when the code location loads.
"""

import dagster as dg

from oura_assets.config import load_settings
from oura_assets.defs import checks
from oura_assets.defs.analytics import AnalyticsResource, build_analytics_assets
from oura_assets.defs.assets import build_graph_assets, build_raw_assets
from oura_assets.defs.housekeeping import housekeeping_job, housekeeping_schedule
from oura_assets.defs.jobs import fast_lane_job, sync_job
from oura_assets.defs.lake import lake_maintenance_job, lake_maintenance_schedule
from oura_assets.defs.partitions import daily_partitions
from oura_assets.defs.resources import OuraResource, WarehouseResource
from oura_assets.defs.schedules import build_nightly_schedule
from oura_assets.defs.sensors import build_event_sensor, build_sync_request_sensor
from oura_assets.defs.watchdog import build_run_worker_watchdog
from oura_assets.defs.webhooks import renew_webhook_subscriptions, webhook_subscriptions_job


@dg.definitions
def defs() -> dg.Definitions:
    settings = load_settings()
    partitions = daily_partitions(settings.start_date)
    return dg.Definitions(
        assets=[
            build_raw_assets(partitions),
            *build_graph_assets(partitions),
            *build_analytics_assets(partitions),
        ],
        # Every check, `webhooks_announced_changes` included: checks.py runs each asset's checks in one step.
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[sync_job, fast_lane_job, housekeeping_job, webhook_subscriptions_job, lake_maintenance_job],
        schedules=[
            build_nightly_schedule(settings.start_date),
            housekeeping_schedule,
            lake_maintenance_schedule,
            renew_webhook_subscriptions,
        ],
        sensors=[
            build_event_sensor(settings.sync_events_interval_s),
            build_sync_request_sensor(settings.start_date),
            build_run_worker_watchdog(),
        ],
        # Steps run in the run worker itself, never in child processes: killing a run's process ends all of
        # it (the multiprocess default left step processes fetching and writing under pid 1). A run is one
        # single-run backfill whose patients already run on threads, so nothing is lost.
        executor=dg.in_process_executor,
        resources={
            "warehouse": WarehouseResource(
                database=str(settings.warehouse_path),
                lake_data_path=getattr(settings.warehouse_path, "data_path", None),
            ),
            "oura": OuraResource(),
            "analytics_store": AnalyticsResource(path=str(settings.analytics_path)),
        },
    )
