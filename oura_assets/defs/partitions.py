"""Daily partitions keyed by Oura `day` (the patient's local calendar date), and the run tags that say what
a run covers, why it started and how it went: their one home, so sensors, schedules and assets agree.

Built by a function rather than at import so `OURA_ASSETS_START_DATE` is read when Dagster loads the code
location, not when a test or a tool merely imports the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import dagster as dg

from oura_assets.shards import Shard

# Dagster's own tags for a ranged run; the public module does not re-export their names.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# ... and for a run of one partition.
PARTITION_TAG = "dagster/partition"

PATIENT_TAG = "oura_assets/patient_id"
# `i/N`: the run syncs only the patients of shard i of N (oura_assets/shards.py); absent, every patient.
SHARD_TAG = "oura_assets/shard"
SYNC_IDS_TAG = "oura_assets/sync_ids"
# What started the run: `schedule`, `api` or `demo`.
TRIGGER_TAG = "oura_assets/trigger"
# Set by the raw asset when it finishes, so the Runs page shows the outcome.
PATIENTS_OK_TAG = "oura_assets/patients_ok"
PATIENTS_FAILED_TAG = "oura_assets/patients_failed"
# Patients with some data landed but not all (a collection lost to an Oura outage, a scope not granted, a
# document screened out): a partial outage shows here on a green run.
PATIENTS_PARTIAL_TAG = "oura_assets/patients_partial"


def daily_partitions(start_date: date) -> dg.DailyPartitionsDefinition:
    # end_offset=1 keeps today's partition: a patient east of UTC is already living "today", and an API sync
    # asks for the last 30 days up to today.
    return dg.DailyPartitionsDefinition(start_date=start_date.isoformat(), timezone="UTC", end_offset=1)


def run_shard(tags: Mapping[str, str]) -> Shard | None:
    """The shard a run's tags name, None when it is not sharded; a malformed tag is a ValueError naming it."""
    raw = tags.get(SHARD_TAG)
    if raw is None:
        return None
    try:
        return Shard.parse(raw)
    except ValueError as exc:
        raise ValueError(f"run tag {SHARD_TAG}: {exc}") from None


def partition_range_tags(start: date, end: date) -> dict[str, str]:
    """Run tags that make one run cover [start, end] (a single-run backfill)."""
    return {
        RANGE_START_TAG: start.isoformat(),
        RANGE_END_TAG: end.isoformat(),
    }


def run_range(tags: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The first and last partition (ISO days) of a run from its tags: a ranged run's, or its one
    partition's; (None, None) for a run over no partitions."""
    start = tags.get(RANGE_START_TAG) or tags.get(PARTITION_TAG)
    end = tags.get(RANGE_END_TAG) or tags.get(PARTITION_TAG)
    return start, end
