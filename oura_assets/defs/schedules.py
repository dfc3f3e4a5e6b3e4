"""The nightly sync: 03:00 UTC, yesterday plus a lookback window, as one run or as N shard runs.

Rings sync late (sleep and readiness reach Oura only when the patient opens the app) and Oura revises
documents after the fact, so each night re-reads the last few days too
(`OURA_ASSETS_LOOKBACK_DAYS`, default 3).

With `OURA_ASSETS_SHARDS=N` (default 1: one run for everyone) the tick starts N runs, tagged `1/N` .. `N/N`,
which the run launcher / run queue runs side by side; each syncs its shard's patients (`shards.py`), and
together they sync every active patient once. Their run keys carry the shard, so a tick evaluated twice
starts none of them twice.
"""

from datetime import date, timedelta

import dagster as dg

from oura_assets.config import load_settings
from oura_assets.defs.jobs import SYNC_JOB_NAME
from oura_assets.defs.partitions import SHARD_TAG, TRIGGER_TAG, partition_range_tags
from oura_assets.shards import Shard


def nightly_run_requests(start: date, end: date, shards: int) -> list[dg.RunRequest]:
    """The tick's runs over [start, end]: one for everyone, or one per shard when `shards` > 1."""
    tags = {**partition_range_tags(start, end), TRIGGER_TAG: "schedule"}
    if shards == 1:
        return [dg.RunRequest(run_key=f"nightly-{end.isoformat()}", tags=tags)]
    return [
        dg.RunRequest(
            run_key=f"nightly-{end.isoformat()}-shard-{shard.number}-of-{shard.count}",
            tags={**tags, SHARD_TAG: str(shard)},
        )
        for shard in Shard.all(shards)
    ]


def nightly_range(scheduled_day: date, lookback_days: int, first_day: date) -> tuple[date, date]:
    """[yesterday - lookback, yesterday] for a tick on `scheduled_day`, never before the first partition."""
    end = scheduled_day - timedelta(days=1)
    return max(first_day, end - timedelta(days=lookback_days)), end


def build_nightly_schedule(first_day: date) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="sync_wearables_daily",
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        job_name=SYNC_JOB_NAME,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly Oura sync for every active patient: yesterday plus the lookback window; "
        "one run, or one run per shard with OURA_ASSETS_SHARDS=N.",
    )
    def sync_wearables_daily(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        settings = load_settings()
        start, end = nightly_range(context.scheduled_execution_time.date(), settings.lookback_days, first_day)
        if end < start:
            return dg.SkipReason(f"nothing to sync before the first partition {first_day}")
        return nightly_run_requests(start, end, settings.shards)

    return sync_wearables_daily
