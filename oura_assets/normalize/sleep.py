"""The night's sleep: picking the day's main sleep period, and the sleep and HRV metrics read from it.

A day can hold several `sleep` periods (naps, rejected detections); CONTRACT §5 says which one counts, and
both the `sleep` and `hrv` rows are read from that one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from oura_assets.normalize.documents import METRIC_KEYS, SLEEP_PERIOD_FIELDS, _Doc, _number
from oura_assets.normalize.timestamps import _utc_z

# `rest` is a detection the user rejected and `deleted` one they removed: neither is the night's sleep
# (oura-openapi.json, PublicSleepType; CONTRACT §5 "main sleep period").
IGNORED_SLEEP_TYPES = frozenset({"deleted", "rest"})


def sleep_metrics(
    daily_sleep: Mapping[str, Any] | None, main_period: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`daily_sleep` (score, restfulness, timing) + the day's main `sleep` period (durations, bedtimes).

    Either may be absent: sleep documents reach the cloud only when the app is opened, so a day can have
    the daily score without the period or the reverse (oura-openapi.json, "Data Sync").
    """
    metrics: dict[str, Any] = dict.fromkeys(METRIC_KEYS["sleep"])
    if daily_sleep is not None:
        d = _Doc("daily_sleep", daily_sleep)
        contributors = d.object("contributors")
        metrics["score"] = d.integer("score")
        metrics["restfulness"] = d.integer("restfulness", contributors)
        metrics["timing"] = d.integer("timing", contributors)
    if main_period is not None:
        p = _Doc("sleep", main_period)
        for key, src in SLEEP_PERIOD_FIELDS.items():
            metrics[key] = p.integer(src)
        # In-progress sleep arrives with `bedtime_end: null` although the spec marks it required
        # (OURA-NOTES.md, Home Assistant integration release notes): it stays None.
        for key, src in (("bedtimeStart", "bedtime_start"), ("bedtimeEnd", "bedtime_end")):
            stamp = p.timestamp(src)
            metrics[key] = None if stamp is None else _utc_z(stamp)
    return metrics


def hrv_metrics(main_period: Mapping[str, Any] | None) -> dict[str, Any]:
    """The main sleep period's HRV: average, max/min of the non-null `hrv.items`, lowest heart rate."""
    metrics: dict[str, Any] = dict.fromkeys(METRIC_KEYS["hrv"])
    if main_period is None:
        return metrics
    p = _Doc("sleep", main_period)
    # `hrv` is `{interval, items: [number|null], timestamp}` or null; items are null where the ring had no
    # reading (oura-openapi.json, PublicSample / Array_Union_float__NoneType_).
    items = p.object("hrv").get("items")
    if items is not None and not isinstance(items, list):
        raise p.error(f"field 'hrv.items' should be a list, got {type(items).__name__}")
    values = [
        v for v in (_number(p, "hrv.items", item, integer=False) for item in items or ()) if v is not None
    ]
    metrics["averageHrv"] = p.integer("average_hrv")
    metrics["maxHrv"] = max(values) if values else None
    metrics["minHrv"] = min(values) if values else None
    metrics["restingHeartRate"] = p.integer("lowest_heart_rate")
    return metrics


def main_sleep_period(periods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The day's main sleep period (CONTRACT §5), or None when every period is `rest`/`deleted`.

    Of the periods whose `type` is not `deleted` or `rest` (a null type counts as an ordinary period), the
    `long_sleep` with the longest `total_sleep_duration`; without a `long_sleep`, the longest of the others.
    A null duration ranks below every number. Ties go to the later `bedtime_start` (as an instant; a null
    bedtime ranks first), then to the greater `id`, so the answer never depends on the input order.
    """
    docs = [_Doc("sleep", period) for period in periods]
    candidates = [d for d in docs if d.doc.get("type") not in IGNORED_SLEEP_TYPES]
    long_sleeps = [d for d in candidates if d.doc.get("type") == "long_sleep"]
    pool = long_sleeps or candidates
    if not pool:
        return None
    return max(pool, key=_period_rank).doc


def _period_rank(d: _Doc) -> tuple[bool, int, datetime, str]:
    duration = d.integer("total_sleep_duration")
    start = d.timestamp("bedtime_start")
    return (
        duration is not None,
        duration or 0,
        start or datetime.min.replace(tzinfo=UTC),
        d.id or "",
    )
