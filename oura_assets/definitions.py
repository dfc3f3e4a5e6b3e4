"""Dagster entry point (`workspace.yaml`, `dagster asset materialize -m oura_assets.definitions`).

Thin on purpose: it only assembles what `oura_assets.defs` builds. Loading is deferred to Dagster
(`@dg.definitions`), so settings such as `OURA_ASSETS_START_DATE` are read when the code location loads.
"""

import dagster as dg

from oura_assets.config import load_settings
from oura_assets.defs import checks
from oura_assets.defs.assets import build_graph_assets, build_raw_assets
from oura_assets.defs.jobs import build_sync_job
from oura_assets.defs.partitions import daily_partitions
from oura_assets.defs.resources import OuraResource, WarehouseResource
from oura_assets.defs.schedules import build_nightly_schedule
from oura_assets.defs.sensors import build_event_sensor, build_sync_request_sensor


@dg.definitions
def defs() -> dg.Definitions:
    settings = load_settings()
    partitions = daily_partitions(settings.start_date)
    sync_job = build_sync_job()
    return dg.Definitions(
        assets=[build_raw_assets(partitions), *build_graph_assets(partitions)],
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[sync_job],
        schedules=[build_nightly_schedule(sync_job, settings.start_date)],
        sensors=[build_event_sensor(), build_sync_request_sensor(sync_job, settings.start_date)],
        resources={
            "warehouse": WarehouseResource(database=str(settings.warehouse_path)),
            "oura": OuraResource(),
        },
    )
