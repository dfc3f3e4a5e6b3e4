"""Heart rate per local calendar day: each day's UTC offset, and the min/max/mean of its samples.

Oura's heart rate is a UTC time series while every other figure is per local day; the offsets read from the
daily documents say where each local day starts, and this module cuts the samples along them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import polars as pl

from oura_assets.normalize.documents import _Doc, _one_per_day
from oura_assets.normalize.errors import NormalizationError
from oura_assets.normalize.timestamps import _utc_timestamps


@dataclass(frozen=True)
class HeartRateDayStats:
    """Heart rate over one local calendar day: distinct samples only; hr_avg the exact mean (unrounded)."""

    hr_min: int | float
    hr_max: int | float
    hr_avg: float
    hr_samples: int
    utc_offset: timedelta


def day_offsets(
    readiness: Iterable[Mapping[str, Any]],
    daily_sleep: Iterable[Mapping[str, Any]],
    activity: Iterable[Mapping[str, Any]],
) -> dict[date, timedelta]:
    """Each day's UTC offset, from its daily documents' `timestamp` (readiness, then sleep, then activity).

    Oura's daily `timestamp` is a LocalizedDateTime carrying the patient's offset on that day
    (oura-openapi.json); it is the only place the patient's time zone shows. A null timestamp is skipped.
    """
    offsets: dict[date, timedelta] = {}
    for collection, docs in (
        ("daily_readiness", readiness),
        ("daily_sleep", daily_sleep),
        ("daily_activity", activity),
    ):
        for day, doc in sorted(_one_per_day(collection, docs).items()):
            if day in offsets:
                continue
            stamp = _Doc(collection, doc).timestamp("timestamp")
            if stamp is not None:
                offsets[day] = stamp.utcoffset() or timedelta(0)
    return dict(sorted(offsets.items()))


def offset_for(day: date, offsets: Mapping[date, timedelta]) -> timedelta:
    """The day's own offset, else the nearest known day's (a tie goes to the earlier day), else UTC."""
    if day in offsets:
        return offsets[day]
    if not offsets:
        return timedelta(0)
    nearest = min(offsets, key=lambda known: (abs((known - day).days), known))
    return offsets[nearest]


def heart_rate_day_stats(
    samples: pl.DataFrame | Sequence[Mapping[str, Any]],
    offsets: Mapping[date, timedelta],
    days: Iterable[date],
) -> dict[date, HeartRateDayStats]:
    """Heart-rate min/max/average/count per local calendar day, for the `days` asked about.

    Local day D covers the UTC instants [D 00:00 - offset(D), D+1 00:00 - offset(D)) with `offset_for`.
    Samples are Oura `heartrate` rows (dicts with an ISO `timestamp`, `bpm`, `source`) or a polars frame
    with those columns (`timestamp` a datetime, naive meaning UTC). A sample repeated at the same instant
    and source counts once — Oura repeats samples across request windows (open-wearables #889). Days
    without samples are omitted. `hr_avg` is the mean at full precision: rounding it here would bias every
    average of averages computed from the table, so only presentation rounds.
    """
    windows = [(day, offset_for(day, offsets)) for day in sorted(set(days))]
    frame = _heart_rate_frame(samples)
    if not windows or frame.is_empty():
        return {}
    # Local day D is the instants [D 00:00 - offset(D), D+1 00:00 - offset(D)); with the samples in time
    # order that is one contiguous slice of them, found by binary search, and its figures are read off the
    # slice in place. Days whose windows overlap or leave gaps (an offset change) stay exact, and nothing the
    # size of the frame is allocated beyond the de-duplicated frame itself (bench/bench_loading.py,
    # `hr_stats`: the previous form concatenated three shifted copies of the frame and joined them).
    timestamp = frame.get_column("timestamp")
    bpm = frame.get_column("bpm")
    bounds = pl.Series(
        [
            datetime.combine(day + timedelta(days=edge), time(), tzinfo=UTC) - offset
            for day, offset in windows
            for edge in (0, 1)
        ],
        dtype=timestamp.dtype,
    )
    cuts = timestamp.search_sorted(bounds, side="left").to_list()
    out = {}
    for i, (day, offset) in enumerate(windows):
        first, end = cuts[2 * i], cuts[2 * i + 1]
        if end <= first:
            continue
        day_bpm = bpm.slice(first, end - first)
        out[day] = HeartRateDayStats(
            hr_min=day_bpm.min(),
            hr_max=day_bpm.max(),
            hr_avg=day_bpm.sum() / (end - first),
            hr_samples=end - first,
            utc_offset=offset,
        )
    return out


def _heart_rate_frame(samples: pl.DataFrame | Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Samples as (timestamp: UTC datetime, bpm, source), distinct by (instant, source), nulls dropped."""
    if isinstance(samples, pl.DataFrame):
        frame = samples.select("timestamp", "bpm", "source")
    else:
        for sample in samples:
            if not isinstance(sample, Mapping):
                raise NormalizationError(
                    f"expected a JSON object, got {type(sample).__name__}", collection="heartrate"
                )
        frame = pl.DataFrame(
            {
                "timestamp": [s.get("timestamp") for s in samples],
                "bpm": [s.get("bpm") for s in samples],
                "source": [s.get("source") for s in samples],
            },
            strict=False,
        )
    frame = frame.with_columns(timestamp=_utc_timestamps(frame.get_column("timestamp")))
    bpm = frame.get_column("bpm")
    if not (bpm.dtype.is_numeric() or bpm.dtype == pl.Null):
        bad = bpm.drop_nulls().head(1).to_list()
        raise NormalizationError(f"'bpm' should be a number, got {bad[0]!r}", collection="heartrate")
    # Same instant and source with two different bpm values: keep the lower, so the result never depends
    # on which copy came first. Only samples sharing their instant with a neighbour (in time order) can be
    # copies, and they are few: those alone are sorted and compared with the previous row. A group_by on
    # (instant, source) over the whole frame held ~250 MiB for 1M samples (bench/bench_loading.py).
    frame = frame.drop_nulls(["timestamp", "bpm"])
    if not frame.get_column("timestamp").is_sorted():
        frame = frame.sort("timestamp")
    timestamp = pl.col("timestamp")
    shared = timestamp.eq_missing(timestamp.shift(1)) | timestamp.eq_missing(timestamp.shift(-1))
    shares_its_instant = frame.select(shared.fill_null(False)).to_series()
    if not shares_its_instant.any():
        return frame
    indexed = frame.with_row_index("row")
    later_copy = timestamp.eq_missing(timestamp.shift(1)) & pl.col("source").eq_missing(
        pl.col("source").shift(1)
    )
    dropped = (
        indexed.filter(shares_its_instant)
        .sort(["timestamp", "source", "bpm"], nulls_last=True)
        .filter(later_copy)
        .get_column("row")
    )
    return indexed.filter(~pl.col("row").is_in(dropped.implode())).drop("row")
