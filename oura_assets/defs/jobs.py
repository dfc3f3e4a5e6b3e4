"""The one job that syncs Oura: every raw and normalized asset, over a partition range, in one run."""

import dagster as dg

from oura_assets.defs.analytics import ANALYTICS_GROUP
from oura_assets.defs.assets import GRAPH_GROUP, RAW_GROUP

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
