"""Oura documents in, patient-graph rows out: the pure core behind `wearable_data` and the daily stats.

Everything here is a plain function on plain data (dicts as Oura sends them, a polars frame for heart rate),
so the mapping from Oura's fields to CONTRACT §5's camelCase keys and columns can be tested exhaustively
without HTTP, DuckDB or Dagster. `patient_wearable_daily_stats` is derived from the `wearable_data` rows
built here rather than from the documents again, so the two tables cannot disagree.

Bad payloads: the normalizers are strict. A document that is not an object, lacks a parseable `id` or `day`,
or carries a string (or bool, or a fractional value for an integer field) where Oura documents a number
raises `NormalizationError` naming the collection, the document id and the field. Upstream code screens
documents with `validate_document` (same checks, returned as a reason) and reports the ones it rejects, so
one malformed document never blocks a patient's other days. Unknown extra fields and missing optional
fields are fine: Oura adds fields between exports and omits some (OURA-NOTES.md, "Unknown extra fields").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from oura_assets.domain import RAW_COLLECTIONS, SOURCE

READINESS_CONTRIBUTORS = {
    "activityBalance": "activity_balance",
    "bodyTemperature": "body_temperature",
    "hrvBalance": "hrv_balance",
    "previousDayActivity": "previous_day_activity",
    "previousNight": "previous_night",
    "recoveryIndex": "recovery_index",
    "restingHeartRate": "resting_heart_rate",
    "sleepBalance": "sleep_balance",
}
ACTIVITY_FIELDS = {
    "activeCalories": "active_calories",
    "totalCalories": "total_calories",
    "steps": "steps",
    "equivalentWalkingDistance": "equivalent_walking_distance",
    "inactivityAlerts": "inactivity_alerts",
}
ACTIVITY_CONTRIBUTORS = {
    "meetDailyTargets": "meet_daily_targets",
    "moveEveryHour": "move_every_hour",
    "trainingFrequency": "training_frequency",
    "trainingVolume": "training_volume",
}
SLEEP_PERIOD_FIELDS = {
    "totalSleep": "total_sleep_duration",
    "efficiency": "efficiency",
    "latency": "latency",
    "remSleep": "rem_sleep_duration",
    "deepSleep": "deep_sleep_duration",
    "lightSleep": "light_sleep_duration",
    "awake": "awake_time",
}

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "readiness": ("score", "temperatureDeviation", "temperatureTrendDeviation", *READINESS_CONTRIBUTORS),
    "sleep": ("score", "restfulness", "timing", *SLEEP_PERIOD_FIELDS, "bedtimeStart", "bedtimeEnd"),
    "activity": ("score", *ACTIVITY_FIELDS, *ACTIVITY_CONTRIBUTORS),
    "hrv": ("averageHrv", "maxHrv", "minHrv", "restingHeartRate"),
}
"""CONTRACT §5: the exact key set of `wearable_data.metrics` per metric_type."""

# `rest` is a detection the user rejected and `deleted` one they removed: neither is the night's sleep
# (oura-openapi.json, PublicSleepType; CONTRACT §5 "main sleep period").
IGNORED_SLEEP_TYPES = frozenset({"deleted", "rest"})


class NormalizationError(ValueError):
    """An Oura document that does not have the documented shape; names the collection, id and field."""

    def __init__(self, message: str, *, collection: str | None = None, document_id: str | None = None):
        self.collection = collection
        self.document_id = document_id
        self.reason = message
        where = f"{collection or 'document'}" + (f" document {document_id!r}" if document_id else "")
        super().__init__(f"{where}: {message}" if collection or document_id else message)


@dataclass(frozen=True)
class WearableRow:
    """One `patient_graph.wearable_data` row (synced_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    metric_type: str
    day: date
    metrics: dict[str, Any]


@dataclass(frozen=True)
class HeartRateDayStats:
    """Heart rate over one local calendar day: distinct samples only; hr_avg the exact mean (unrounded)."""

    hr_min: int | float
    hr_max: int | float
    hr_avg: float
    hr_samples: int
    utc_offset: timedelta


@dataclass(frozen=True)
class DailyStatsRow:
    """One `patient_graph.patient_wearable_daily_stats` row (updated_at is added by the writer)."""

    patient_id: str
    source: str = field(default=SOURCE, kw_only=True)
    day: date
    readiness_score: int | None
    sleep_score: int | None
    activity_score: int | None
    total_sleep_seconds: int | None
    steps: int | None
    active_calories: int | None
    total_calories: int | None
    average_hrv: int | None
    resting_heart_rate: int | None
    hr_min: int | float | None
    hr_max: int | float | None
    hr_avg: float | None
    hr_samples: int
    utc_offset_minutes: int


class _Doc:
    """Typed reads from one document, with errors that name the collection, the id and the field."""

    def __init__(self, collection: str, doc: object):
        if not isinstance(doc, Mapping):
            raise NormalizationError(
                f"expected a JSON object, got {type(doc).__name__}", collection=collection
            )
        self.collection = collection
        self.doc = doc
        raw_id = doc.get("id")
        self.id = raw_id if isinstance(raw_id, str) and raw_id else None

    def error(self, message: str) -> NormalizationError:
        return NormalizationError(message, collection=self.collection, document_id=self.id)

    def object(self, key: str) -> Mapping[str, Any]:
        """A nested object; missing or null reads as empty (Oura omits optional objects)."""
        value = self.doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"field {key!r} should be an object, got {type(value).__name__}")
        return value

    def number(self, key: str, source: Mapping[str, Any] | None = None, *, integer: bool = False):
        return _number(self, key, (self.doc if source is None else source).get(key), integer=integer)

    def integer(self, key: str, source: Mapping[str, Any] | None = None) -> int | None:
        return self.number(key, source, integer=True)

    def timestamp(self, key: str) -> datetime | None:
        value = self.doc.get(key)
        if value is None:
            return None
        try:
            return _parse_aware(value)
        except ValueError as exc:
            raise self.error(f"field {key!r}: {exc}") from None

    def day(self) -> date:
        if self.id is None:
            raise self.error("missing or empty 'id'")
        value = self.doc.get("day")
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise self.error(
                "missing 'day'" if value is None else f"'day' should be a date string, got {value!r}"
            )
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise self.error(f"'day' is not an ISO date: {value!r}") from None


def _number(doc: _Doc, key: str, value: object, *, integer: bool) -> int | float | None:
    """Oura's numbers, strictly: null stays None, 7.0 for an integer field becomes 7, anything else errs."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise doc.error(f"field {key!r} should be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise doc.error(f"field {key!r} is not a finite number: {value!r}")
        if integer:
            if not value.is_integer():
                raise doc.error(f"field {key!r} should be an integer, got {value!r}")
            return int(value)
    return value


def _parse_aware(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__} {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        # Oura's LocalizedDateTime always carries an offset; without one the instant is unknowable.
        raise ValueError(f"date-time without a UTC offset: {value!r}")
    return parsed


def to_utc_z(ts: str | None) -> str | None:
    """An ISO-8601 date-time with any offset (`+05:30`, `-07:00`, `Z`, `.000Z`, `+0530`), with a `T` or a
    space between date and time, as UTC `YYYY-MM-DDTHH:MM:SSZ` (Python 3.11's `fromisoformat` reads them all).

    Sub-seconds are truncated (not rounded), so every value has the same shape and sorts as text.
    Raises `NormalizationError` on text that is not a date-time with an offset.
    """
    if ts is None:
        return None
    try:
        parsed = _parse_aware(ts)
    except ValueError as exc:
        raise NormalizationError(str(exc)) from None
    return _utc_z(parsed)


def _utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def readiness_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`daily_readiness` → readiness metrics. Contributors are 1-100 scores, not °C or bpm."""
    d = _Doc("daily_readiness", doc)
    contributors = d.object("contributors")
    return {
        "score": d.integer("score"),
        "temperatureDeviation": d.number("temperature_deviation"),
        "temperatureTrendDeviation": d.number("temperature_trend_deviation"),
        **{key: d.integer(src, contributors) for key, src in READINESS_CONTRIBUTORS.items()},
    }


def activity_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`daily_activity` → activity metrics."""
    d = _Doc("daily_activity", doc)
    contributors = d.object("contributors")
    return {
        "score": d.integer("score"),
        **{key: d.integer(src) for key, src in ACTIVITY_FIELDS.items()},
        **{key: d.integer(src, contributors) for key, src in ACTIVITY_CONTRIBUTORS.items()},
    }


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


def validate_document(collection: str, doc: object) -> str | None:
    """Why `doc` cannot be normalized as a `collection` document, or None when it can.

    The same checks the normalizers make (they raise `NormalizationError` instead), so a caller that lands
    only documents passing this never sees the normalizers fail. Heart-rate rows need a date-time with an
    offset (or `Z`) and a numeric `bpm`.
    """
    if collection not in RAW_COLLECTIONS:
        raise ValueError(
            f"unknown Oura collection {collection!r}; expected one of {', '.join(RAW_COLLECTIONS)}"
        )
    try:
        d = _Doc(collection, doc)
        if collection == "heartrate":
            if d.doc.get("timestamp") is None:
                return "missing 'timestamp'"
            d.timestamp("timestamp")
            if d.number("bpm") is None:
                return "missing 'bpm'"
            return None
        d.day()
        if collection != "sleep":
            d.timestamp("timestamp")
        if collection == "daily_readiness":
            readiness_metrics(d.doc)
        elif collection == "daily_activity":
            activity_metrics(d.doc)
        elif collection == "daily_sleep":
            sleep_metrics(d.doc, None)
        else:
            sleep_metrics(None, d.doc)
            hrv_metrics(d.doc)
            _period_rank(d)
    except NormalizationError as exc:
        return exc.reason
    return None


def _by_day(collection: str, docs: Iterable[object]) -> dict[date, list[Mapping[str, Any]]]:
    """Documents grouped by `day`, one per `id` (the last one given wins, as when Oura revises a document)."""
    latest: dict[str, tuple[date, Mapping[str, Any]]] = {}
    for raw in docs:
        d = _Doc(collection, raw)
        day = d.day()
        assert d.id is not None  # d.day() insists on an id
        latest.pop(d.id, None)
        latest[d.id] = (day, d.doc)
    grouped: dict[date, list[Mapping[str, Any]]] = {}
    for day, doc in latest.values():
        grouped.setdefault(day, []).append(doc)
    return grouped


def _one_per_day(collection: str, docs: Iterable[object]) -> dict[date, Mapping[str, Any]]:
    # Two daily documents with different ids for one day: the one given last wins, as for a revised id.
    return {day: group[-1] for day, group in _by_day(collection, docs).items()}


def wearable_rows(
    patient_id: str,
    readiness: Iterable[Mapping[str, Any]],
    daily_sleep: Iterable[Mapping[str, Any]],
    sleep_periods: Iterable[Mapping[str, Any]],
    activity: Iterable[Mapping[str, Any]],
) -> list[WearableRow]:
    """One patient's `wearable_data` rows from raw documents spanning any number of days.

    A row exists only where Oura returned its source document(s) — readiness: a `daily_readiness`; sleep:
    a `daily_sleep` or a main sleep period; activity: a `daily_activity`; hrv: a main sleep period — and
    at least one of its metrics is not null (no all-null rows for days the ring was not worn).
    Sorted by (day, metric_type).
    """
    readiness_by_day = _one_per_day("daily_readiness", readiness)
    daily_sleep_by_day = _one_per_day("daily_sleep", daily_sleep)
    activity_by_day = _one_per_day("daily_activity", activity)
    main_by_day = {
        day: main
        for day, periods in _by_day("sleep", sleep_periods).items()
        if (main := main_sleep_period(periods)) is not None
    }

    rows: list[WearableRow] = []

    def add(metric_type: str, day: date, metrics: dict[str, Any]) -> None:
        if any(value is not None for value in metrics.values()):
            rows.append(WearableRow(patient_id, metric_type, day, metrics))

    for day, doc in readiness_by_day.items():
        add("readiness", day, readiness_metrics(doc))
    for day, doc in activity_by_day.items():
        add("activity", day, activity_metrics(doc))
    for day in daily_sleep_by_day.keys() | main_by_day.keys():
        add("sleep", day, sleep_metrics(daily_sleep_by_day.get(day), main_by_day.get(day)))
    for day, main in main_by_day.items():
        add("hrv", day, hrv_metrics(main))
    return sorted(rows, key=lambda row: (row.day, row.metric_type))


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
    window_frame = pl.DataFrame(
        {
            "day": [day for day, _ in windows],
            "offset_s": [int(offset.total_seconds()) for _, offset in windows],
        },
        schema={"day": pl.Date, "offset_s": pl.Int64},
    )
    # Offsets lie within ±14 h, so a sample's local day is its UTC date or one of its neighbours; trying
    # all three keeps days whose windows overlap or leave gaps (an offset change) exact.
    utc_date = pl.col("timestamp").dt.date()
    local = pl.col("timestamp") + pl.duration(seconds=pl.col("offset_s"))
    candidates = pl.concat(
        [frame.with_columns(day=utc_date + pl.duration(days=shift)) for shift in (-1, 0, 1)]
    ).join(window_frame, on="day", how="inner")
    stats = (
        candidates.filter(local.dt.date() == pl.col("day"))
        .group_by("day")
        .agg(
            hr_min=pl.col("bpm").min(),
            hr_max=pl.col("bpm").max(),
            hr_avg=pl.col("bpm").mean(),
            hr_samples=pl.len(),
        )
        .sort("day")
    )
    by_day = dict(windows)
    return {
        row["day"]: HeartRateDayStats(
            hr_min=row["hr_min"],
            hr_max=row["hr_max"],
            hr_avg=row["hr_avg"],
            hr_samples=row["hr_samples"],
            utc_offset=by_day[row["day"]],
        )
        for row in stats.iter_rows(named=True)
    }


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
    # on which copy came first.
    return frame.drop_nulls(["timestamp", "bpm"]).group_by(["timestamp", "source"]).agg(pl.col("bpm").min())


def _utc_timestamps(column: pl.Series) -> pl.Series:
    if column.dtype == pl.Null:
        return column.cast(pl.Datetime("us", "UTC"))
    if isinstance(column.dtype, pl.Datetime):
        if column.dtype.time_zone is None:
            return column.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if column.dtype != pl.String:
        raise NormalizationError(
            f"'timestamp' should be an ISO-8601 string, got {column.dtype}", collection="heartrate"
        )
    # Oura sends `+00:00` or `.000Z` (OURA-NOTES.md, heartrate rows); chrono's %:z does not take `Z`. Its
    # framework (FastAPI on pydantic) also reads a space (or `t`, `_`) separator and `±HHMM` offsets, so a
    # client must too: both are rewritten to the one shape the format below takes.
    text = (
        column.str.replace(r"[Zz]$", "+00:00")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT_]", "${1}T")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
    )
    parsed = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_zone="UTC", time_unit="us", strict=False)
    failed = parsed.is_null() & text.is_not_null()
    if failed.any():
        bad = text.filter(failed).head(1).to_list()[0]
        raise NormalizationError(
            f"'timestamp' is not an ISO-8601 date-time with an offset: {bad!r}", collection="heartrate"
        )
    return parsed


def daily_stats_rows(
    patient_id: str,
    wearable_rows: Iterable[WearableRow],
    hr_stats: Mapping[date, HeartRateDayStats],
    offsets: Mapping[date, timedelta],
) -> list[DailyStatsRow]:
    """One row per day with any wearable row or heart-rate samples, read from the `wearable_data` rows.

    Scores, sleep, steps, calories and HRV come from the rows' metrics (so the two tables agree by
    construction); heart rate from `hr_stats`. A day without samples has hr_samples 0 and null hr_*.
    `utc_offset_minutes` is the offset its local day was cut with. Sorted by day.
    """
    metrics: dict[date, dict[str, dict[str, Any]]] = {}
    for row in wearable_rows:
        if row.patient_id != patient_id:
            raise ValueError(f"wearable row for patient {row.patient_id!r} passed with {patient_id!r}")
        metrics.setdefault(row.day, {})[row.metric_type] = row.metrics
    days = sorted(metrics.keys() | {day for day, stats in hr_stats.items() if stats.hr_samples > 0})

    out: list[DailyStatsRow] = []
    for day in days:
        by_type = metrics.get(day, {})
        readiness, sleep, activity, hrv = (
            by_type.get(metric_type, {}) for metric_type in ("readiness", "sleep", "activity", "hrv")
        )
        hr = hr_stats.get(day)
        offset = hr.utc_offset if hr is not None else offset_for(day, offsets)
        out.append(
            DailyStatsRow(
                patient_id=patient_id,
                day=day,
                readiness_score=readiness.get("score"),
                sleep_score=sleep.get("score"),
                activity_score=activity.get("score"),
                total_sleep_seconds=sleep.get("totalSleep"),
                steps=activity.get("steps"),
                active_calories=activity.get("activeCalories"),
                total_calories=activity.get("totalCalories"),
                average_hrv=hrv.get("averageHrv"),
                resting_heart_rate=hrv.get("restingHeartRate"),
                hr_min=hr.hr_min if hr else None,
                hr_max=hr.hr_max if hr else None,
                hr_avg=hr.hr_avg if hr else None,
                hr_samples=hr.hr_samples if hr else 0,
                utc_offset_minutes=int(offset.total_seconds() // 60),
            )
        )
    return out
