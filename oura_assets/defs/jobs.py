"""The one job that syncs Oura: every raw and normalized asset, over a partition range, in one run."""

import dagster as dg

from oura_assets.defs.analytics import ANALYTICS_GROUP
from oura_assets.defs.assets import GRAPH_GROUP, RAW_GROUP, RAW_KEYS

SYNC_JOB_NAME = "oura_sync"

# Schedules and sensors name it (`job_name=SYNC_JOB_NAME`); the Definitions resolve it against the assets.
sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    selection=dg.AssetSelection.groups(RAW_GROUP, GRAPH_GROUP, ANALYTICS_GROUP),
    description=(
        "Fetch a range of days from Oura for the run's patients, rebuild the patient graph and republish "
        "the analytics snapshot."
    ),
)

FAST_LANE_JOB_NAME = "oura_sync_fast_lane"

# The API's fast lane (api/first_data.py): a new patient's first days, a webhook's day. The raw assets with
# their blocking checks (bad documents never reach the patient graph) and the patient graph; the graph's own
# checks (warnings) and the analytics snapshot are left to the next full run over the same days (the 30-day
# initial sync right after a first-data run, the nightly run after a webhook's), so the lane is free sooner.
fast_lane_job = dg.define_asset_job(
    FAST_LANE_JOB_NAME,
    selection=(
        dg.AssetSelection.groups(RAW_GROUP, GRAPH_GROUP).without_checks()
        | dg.AssetSelection.checks_for_assets(*RAW_KEYS.values())
    ),
    description="A short sync the connection API runs itself: a new patient's first data, a webhook's day.",
)
