"""The nightly sync: 03:00 UTC, yesterday plus a lookback window.

Rings sync late (sleep and readiness reach Oura only when the patient opens the app) and Oura revises
documents after the fact, so each night re-reads the last few days too
(`OURA_ASSETS_LOOKBACK_DAYS`, default 3).
"""

from datetime import date, timedelta

import dagster as dg

from oura_assets.config import load_settings
from oura_assets.defs.jobs import SYNC_JOB_NAME
from oura_assets.defs.partitions import TRIGGER_TAG, partition_range_tags


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
        description="Nightly Oura sync for every active patient: yesterday plus the lookback window.",
    )
    def sync_wearables_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        lookback = load_settings().lookback_days
        start, end = nightly_range(context.scheduled_execution_time.date(), lookback, first_day)
        if end < start:
            return dg.SkipReason(f"nothing to sync before the first partition {first_day}")
        return dg.RunRequest(
            run_key=f"nightly-{end.isoformat()}",
            tags={**partition_range_tags(start, end), TRIGGER_TAG: "schedule"},
        )

    return sync_wearables_daily
