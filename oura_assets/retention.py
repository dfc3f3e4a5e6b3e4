"""Raw heart-rate retention: which samples are old enough to drop, and what the daily stats keep of them.

`OURA_ASSETS_RAW_HEARTRATE_RETENTION_DAYS` (unset: keep everything) bounds how long the per-second-ish
samples stay in `oura_raw.heartrate`. The daily figures derived from them (`hr_min`, `hr_max`, `hr_avg`,
`hr_samples` in `patient_wearable_daily_stats`) stay: the rebuild keeps a day's stored figures when the day
begins before the retention horizon, instead of recomputing them from the samples that are gone (which would
null them, or shrink a day cut in half by the horizon). Plain functions; the Dagster job is in
`defs/retention.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from oura_assets import warehouse as wh
from oura_assets.normalize import HeartRateDayStats, offset_for


def heartrate_cutoff(now: datetime, retention_days: int) -> datetime:
    """Midnight UTC `retention_days` days before `now`'s day: samples before it are dropped."""
    day = now.astimezone(UTC).date() - timedelta(days=retention_days)
    return datetime.combine(day, time(), tzinfo=UTC)


def local_day_start(day: date, offset: timedelta) -> datetime:
    """The UTC instant local day `day` begins at, for a patient at UTC + `offset`."""
    return datetime.combine(day, time(), tzinfo=UTC) - offset


def keep_pruned_heart_rate(
    computed: Mapping[date, HeartRateDayStats],
    stored: Mapping[date, Mapping[str, Any]],
    offsets: Mapping[date, timedelta],
    days: Iterable[date],
    horizon: datetime | None,
) -> dict[date, HeartRateDayStats]:
    """`computed`, except that a day beginning before `horizon` keeps its `stored` figures, if it has any.

    Such a day lost some or all of its samples to retention, so what the samples say now is not the day.
    A day before the horizon without stored figures keeps what was computed (a backfill that fetched old
    samples again, say).
    """
    out = dict(computed)
    if horizon is None:
        return out
    for day in days:
        figures = stored.get(day)
        if figures is None or local_day_start(day, offset_for(day, offsets)) >= horizon:
            continue
        minutes = figures.get("utc_offset_minutes")
        out[day] = HeartRateDayStats(
            hr_min=figures["hr_min"],
            hr_max=figures["hr_max"],
            hr_avg=figures["hr_avg"],
            hr_samples=figures["hr_samples"],
            utc_offset=offset_for(day, offsets) if minutes is None else timedelta(minutes=minutes),
        )
    return out


def apply_heartrate_retention(
    warehouse: wh.Warehouse, retention_days: int, now: datetime, request_id: str
) -> tuple[datetime, int]:
    """Drop every patient's raw heart-rate samples before the cutoff, audited; (cutoff, rows deleted)."""
    cutoff = heartrate_cutoff(now, retention_days)
    with warehouse.transaction("retention: drop old raw heart-rate samples") as conn:
        deleted = wh.prune_raw_heartrate(conn, cutoff, now)
        wh.record_audit(
            conn,
            wh.AuditEntry(
                occurred_at=now,
                actor=wh.OPERATOR,
                action="retention",
                patient_id=None,
                outcome="ok",
                request_id=request_id,
                detail={
                    "table": wh.RAW_HEARTRATE,
                    "cutoff": cutoff.isoformat(),
                    "retentionDays": retention_days,
                    "rowsDeleted": deleted,
                },
            ),
        )
    return cutoff, deleted
