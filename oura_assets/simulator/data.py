"""Deterministic Oura data for any user name on any day: the simulated world behind the API routes.

Everything is derived from hashes, never stored, so two simulator instances (or a restart) agree on every id
and value, and any date can be asked for in any order. The model, which clients must cope with:

- A user is any name. `profile(name)` derives the user's habits from a hash of the name: a time zone (fixed
  offsets from -03:00 to +09:00 including +05:30, and zones that observe DST, so the offset carried by the
  documents changes during the year), how often the ring is left off, bedtime, how late the user opens the
  app, how often and how late Oura revises a day.
- A day (`plan(name, day)`) is derived from a hash of (name, day). About 5-10 % of days are not worn: no
  documents at all and no heart rate in that local day.
- Sleep periods belong to the day the user wakes up (a period ending after 18:00 local counts for the next
  day). Most days have one main `long_sleep`; some nights are short (only a `sleep` period, no
  `long_sleep`) or split into two `long_sleep` halves; some days add an afternoon `sleep` nap, a
  `late_nap` the evening before (counted for this day), a `rest` period (a detection the user rejected) or
  a `deleted` period that can be longer than the main sleep. Scores are null on some days and
  `hrv.items` holds nulls.
- Late sync, on the data clock `now`: a sleep period, the day's `daily_sleep`, `daily_readiness`, workouts and
  sessions appear only once the user opens the app after the period ends (a per-user delay with per-day
  jitter; on some days not until the next day). `daily_activity` (04:00 to 04:00 local) appears once its day
  has closed, plus a background-sync delay. Heart rate is visible up to `now` minus a per-user lag.
- In progress: on some nights, from bedtime + 45 min until the finished night syncs, the main period is
  served with `bedtime_end: null` and null durations (reported of real Oura although the spec requires it).
- Revisions: on some days Oura recomputes after the fact. From `revised_at` (a per-user delay after the day
  first appeared) the same `id` is served with changed scores and more steps; documents carrying the
  unknown extra `meta` object then show `version: 2` and the new `updated_at`.
- Unknown extra fields: some documents carry `meta {updated_at, version}`, some heart-rate rows a
  `producer_timestamp`; heart-rate timestamps come as `+00:00` or `.000Z`.

Documents are built lazily per (user, day, collection) and kept in bounded caches (callers must not mutate
them), so a year of every collection takes a fraction of a second and 30 days of heart rate milliseconds.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

Document = dict[str, Any]

# Fixed offsets and DST zones, so clients meet negative, half-hour and changing offsets.
ZONES = (
    "Europe/Berlin",  # +01:00 / +02:00 (DST)
    "America/New_York",  # -05:00 / -04:00 (DST)
    "Asia/Kolkata",  # +05:30
    "UTC",
    "America/Los_Angeles",  # -08:00 / -07:00 (DST)
    "Asia/Tokyo",  # +09:00
    "America/Sao_Paulo",  # -03:00
    "Australia/Adelaide",  # +09:30 / +10:30 (DST, southern hemisphere)
)
WORKOUT_ACTIVITIES = ("walking", "running", "cycling", "strength_training", "yoga", "hiking", "swimming")
EPOCH_ORDINAL_MIN = date(1970, 1, 1).toordinal()
EPOCH_ORDINAL_MAX = date(2200, 1, 1).toordinal()


def _hash(*parts: object) -> int:
    joined = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(joined, digest_size=8).digest(), "big")


def _rng(*parts: object) -> random.Random:
    return random.Random(_hash(*parts))


def _clamp(value: float, low: int = 1, high: int = 100) -> int:
    return max(low, min(high, round(value)))


@dataclass(frozen=True)
class UserProfile:
    """A simulated Oura account's fixed traits, all derived from its name."""

    name: str
    user_id: str
    zone: ZoneInfo
    id_mask: int
    not_worn_rate: float
    null_score_rate: float
    bedtime_h: float
    sleep_h: float
    app_delay_h: float
    activity_delay_h: float
    hr_lag_min: int
    revision_rate: float
    revision_delay_h: float
    meta_rate: float
    in_progress_rate: float
    resting_hr: int
    base_hrv: int
    age: int
    weight: float
    height: float
    biological_sex: str

    @property
    def email(self) -> str:
        return f"{''.join(c for c in self.name.lower() if c.isalnum() or c in '.-_') or 'user'}@example.com"


@lru_cache(maxsize=4096)
def profile(name: str) -> UserProfile:
    rng = _rng("profile", name)
    sex = rng.choice(("female", "male"))
    return UserProfile(
        name=name,
        user_id=str(
            uuid.UUID(bytes=hashlib.blake2b(f"user:{name}".encode(), digest_size=16).digest(), version=4)
        ),
        zone=ZoneInfo(ZONES[_hash("zone", name) % len(ZONES)]),
        id_mask=_hash("id-mask", name) & 0xFFFFFF,
        not_worn_rate=rng.uniform(0.05, 0.10),
        null_score_rate=rng.uniform(0.02, 0.06),
        bedtime_h=rng.uniform(21.75, 24.75),
        sleep_h=rng.uniform(6.3, 8.4),
        app_delay_h=rng.uniform(0.25, 6.0),
        activity_delay_h=rng.uniform(0.5, 3.0),
        hr_lag_min=rng.randint(5, 60),
        revision_rate=rng.uniform(0.15, 0.35),
        revision_delay_h=rng.uniform(3.0, 30.0),
        meta_rate=rng.choice((0.0, 0.1, 0.3)),
        in_progress_rate=rng.uniform(0.3, 0.6),
        resting_hr=rng.randint(46, 64),
        base_hrv=rng.randint(25, 80),
        age=rng.randint(19, 78),
        weight=round(rng.uniform(52, 105), 1),
        height=round(rng.uniform(1.55, 1.95), 2),
        biological_sex=sex,
    )


def local_midnight(zone: ZoneInfo, day: date) -> datetime:
    """The UTC instant a local calendar day starts (23 or 25 hours long on DST changes)."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _local_instant(zone: ZoneInfo, day: date, hours: float) -> datetime:
    """The UTC instant at a local wall-clock time `hours` after `day`'s midnight."""
    wall = datetime.combine(day, time()) + timedelta(hours=hours)
    return wall.replace(tzinfo=zone, second=0, microsecond=0).astimezone(UTC)


def local_iso(zone: ZoneInfo, instant: datetime) -> str:
    return instant.astimezone(zone).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Period:
    """One detected sleep period: its type and its bounds as UTC instants."""

    index: int
    kind: str
    start: datetime
    end: datetime
    visible_at: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True)
class Span:
    """A workout or session: what, when (UTC), and when it reaches the cloud."""

    index: int
    kind: str
    start: datetime
    end: datetime
    visible_at: datetime


@dataclass(frozen=True)
class DayPlan:
    """One user's day: whether the ring was worn, its periods, scores and when things appear or change."""

    day: date
    worn: bool
    periods: tuple[Period, ...] = ()
    workouts: tuple[Span, ...] = ()
    sessions: tuple[Span, ...] = ()
    readiness_score: int | None = None
    sleep_score: int | None = None
    activity_score: int | None = None
    daily_visible_at: datetime | None = None
    activity_visible_at: datetime | None = None
    revised_at: datetime | None = None
    revision_delta: int = 0
    in_progress: bool = False

    @property
    def main_period(self) -> Period | None:
        candidates = [p for p in self.periods if p.kind == "long_sleep"] or [
            p for p in self.periods if p.kind == "sleep"
        ]
        return max(candidates, key=lambda p: p.seconds) if candidates else None


@lru_cache(maxsize=65536)
def plan(name: str, day: date) -> DayPlan:
    user = profile(name)
    rng = _rng("day", name, day.isoformat())
    if rng.random() < user.not_worn_rate:
        return DayPlan(day=day, worn=False)
    zone = user.zone
    delay = user.app_delay_h * rng.uniform(0.5, 1.5) + (24.0 if rng.random() < 0.08 else 0.0)

    def shown(end: datetime) -> datetime:
        return end + timedelta(hours=delay)

    periods: list[Period] = []
    previous = day - timedelta(days=1)
    bedtime = user.bedtime_h + rng.uniform(-0.9, 0.9)
    start = _local_instant(zone, previous, bedtime)
    night = rng.random()
    if night < 0.03:
        # A short night: only a `sleep` period, no `long_sleep` for the day.
        end = start + timedelta(hours=rng.uniform(1.5, 2.9))
        periods.append(Period(0, "sleep", start, end, shown(end)))
    elif night < 0.05:
        # A split night: two `long_sleep` halves.
        first_end = start + timedelta(hours=rng.uniform(3.2, 4.0))
        second_start = first_end + timedelta(minutes=rng.randint(45, 100))
        second_end = second_start + timedelta(hours=rng.uniform(3.1, 4.5))
        periods.append(Period(0, "long_sleep", start, first_end, shown(second_end)))
        periods.append(Period(1, "long_sleep", second_start, second_end, shown(second_end)))
    else:
        end = start + timedelta(hours=max(3.2, user.sleep_h + rng.uniform(-1.3, 1.3)))
        periods.append(Period(0, "long_sleep", start, end, shown(end)))
    main_end = periods[-1].end
    main_seconds = max(p.seconds for p in periods)
    extra = rng.random()
    if extra < 0.12:
        nap_start = _local_instant(zone, day, rng.uniform(12.5, 16.0))
        nap_end = nap_start + timedelta(minutes=rng.randint(20, 90))
        periods.append(Period(len(periods), "sleep", nap_start, nap_end, shown(nap_end)))
    elif extra < 0.18:
        nap_start = _local_instant(zone, previous, rng.uniform(18.2, 20.0))
        nap_end = nap_start + timedelta(minutes=rng.randint(20, 60))
        periods.insert(0, Period(0, "late_nap", nap_start, nap_end, shown(nap_end)))
    elif extra < 0.24:
        rest_start = _local_instant(zone, day, rng.uniform(10.0, 16.0))
        rest_end = rest_start + timedelta(minutes=rng.randint(15, 70))
        periods.append(Period(len(periods), "rest", rest_start, rest_end, shown(rest_end)))
    elif extra < 0.28:
        # A deleted detection longer than the night's main sleep, still ending before the 18:00 day change.
        deleted_start = main_end + timedelta(minutes=rng.randint(20, 50))
        latest_end = _local_instant(zone, day, 17.9)
        deleted_end = min(
            deleted_start + timedelta(seconds=main_seconds + rng.randint(1800, 7200)), latest_end
        )
        periods.append(Period(len(periods), "deleted", deleted_start, deleted_end, shown(deleted_end)))
    periods = [
        Period(i, p.kind, p.start, p.end, p.visible_at)
        for i, p in enumerate(sorted(periods, key=lambda p: p.start))
    ]
    daily_visible = shown(main_end)

    workouts: list[Span] = []
    if rng.random() < 0.35:
        w_start = _local_instant(zone, day, rng.uniform(7.0, 19.0))
        w_end = w_start + timedelta(minutes=rng.randint(25, 90))
        workouts.append(Span(0, rng.choice(WORKOUT_ACTIVITIES), w_start, w_end, shown(w_end)))
    sessions: list[Span] = []
    if rng.random() < 0.15:
        s_start = _local_instant(zone, day, rng.uniform(8.0, 21.0))
        s_end = s_start + timedelta(minutes=rng.randint(5, 20))
        sessions.append(
            Span(
                0, rng.choice(("breathing", "meditation", "relaxation", "rest")), s_start, s_end, shown(s_end)
            )
        )

    def score(mean: float, spread: float) -> int | None:
        return None if rng.random() < user.null_score_rate else _clamp(rng.gauss(mean, spread), 20, 100)

    activity_visible = _local_instant(zone, day + timedelta(days=1), 4.0) + timedelta(
        hours=user.activity_delay_h * rng.uniform(0.5, 1.5)
    )
    revised = rng.random() < user.revision_rate
    return DayPlan(
        day=day,
        worn=True,
        periods=tuple(periods),
        workouts=tuple(workouts),
        sessions=tuple(sessions),
        readiness_score=score(76, 9),
        sleep_score=score(74, 10),
        activity_score=score(78, 11),
        daily_visible_at=daily_visible,
        activity_visible_at=activity_visible,
        revised_at=(daily_visible + timedelta(hours=user.revision_delay_h)) if revised else None,
        revision_delta=rng.choice((-4, -3, -2, 2, 3, 5)) if revised else 0,
        in_progress=rng.random() < user.in_progress_rate,
    )


def document_id(user: UserProfile, collection: str, day: date, index: int) -> str:
    """A stable, opaque UUID for a document that still lets `find_document` regenerate its day."""
    raw = bytearray(
        hashlib.blake2b(f"{user.name}|{collection}|{day}|{index}".encode(), digest_size=16).digest()
    )
    raw[10:13] = (day.toordinal() ^ user.id_mask).to_bytes(3, "big")
    return str(uuid.UUID(bytes=bytes(raw), version=4))


def _day_of_id(user: UserProfile, document_id_: str) -> date | None:
    try:
        raw = uuid.UUID(document_id_).bytes
    except ValueError:
        return None
    ordinal = int.from_bytes(raw[10:13], "big") ^ user.id_mask
    if not EPOCH_ORDINAL_MIN <= ordinal <= EPOCH_ORDINAL_MAX:
        return None
    return date.fromordinal(ordinal)


def _meta(
    user: UserProfile, doc_id: str, first_seen: datetime, revised_at: datetime | None
) -> Document | None:
    if user.meta_rate <= 0 or (_hash("meta", doc_id) % 1000) / 1000 >= user.meta_rate:
        return None
    updated = revised_at or first_seen
    return {"updated_at": local_iso(user.zone, updated), "version": 2 if revised_at else 1}


def _contributors(rng: random.Random, keys: Iterable[str], level: int | None, null_rate: float) -> Document:
    base = 70 if level is None else level
    return {key: None if rng.random() < null_rate else _clamp(rng.gauss(base, 12)) for key in keys}


READINESS_CONTRIBUTORS = (
    "activity_balance",
    "body_temperature",
    "hrv_balance",
    "previous_day_activity",
    "previous_night",
    "recovery_index",
    "resting_heart_rate",
    "sleep_balance",
    "sleep_regularity",
)
SLEEP_CONTRIBUTORS = (
    "deep_sleep",
    "efficiency",
    "latency",
    "rem_sleep",
    "restfulness",
    "timing",
    "total_sleep",
)
ACTIVITY_CONTRIBUTORS = (
    "meet_daily_targets",
    "move_every_hour",
    "recovery_time",
    "stay_active",
    "training_frequency",
    "training_volume",
)


def _revise(value: int | None, delta: int, revised: bool) -> int | None:
    return value if value is None or not revised else _clamp(value + delta)


def _readiness_body(user: UserProfile, plan_: DayPlan, revised: bool) -> Document:
    rng = _rng("readiness", user.name, plan_.day.isoformat())
    score = _revise(plan_.readiness_score, plan_.revision_delta, revised)
    contributors = _contributors(rng, READINESS_CONTRIBUTORS, score, 0.03)
    return {
        "contributors": contributors,
        "score": score,
        "temperature_deviation": None if score is None else round(rng.gauss(0, 0.35), 2),
        "temperature_trend_deviation": None if score is None else round(rng.gauss(0, 0.2), 2),
    }


@lru_cache(maxsize=32768)
def _daily_readiness(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    doc_id = document_id(user, "daily_readiness", day, 0)
    doc: Document = {"id": doc_id, "day": day.isoformat(), **_readiness_body(user, plan_, revised)}
    doc["timestamp"] = local_iso(user.zone, local_midnight(user.zone, day))
    return _with_meta(user, doc, plan_.daily_visible_at, plan_.revised_at if revised else None)


def _with_meta(
    user: UserProfile, doc: Document, first_seen: datetime | None, revised_at: datetime | None
) -> Document:
    meta = _meta(user, doc["id"], first_seen or datetime.min.replace(tzinfo=UTC), revised_at)
    if meta is not None:
        doc["meta"] = meta
    return doc


@lru_cache(maxsize=32768)
def _daily_sleep(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = _rng("daily_sleep", name, day.isoformat())
    score = _revise(plan_.sleep_score, plan_.revision_delta, revised)
    doc: Document = {
        "id": document_id(user, "daily_sleep", day, 0),
        "contributors": _contributors(rng, SLEEP_CONTRIBUTORS, score, 0.02),
        "day": day.isoformat(),
        "score": score,
        "timestamp": local_iso(user.zone, local_midnight(user.zone, day)),
    }
    return _with_meta(user, doc, plan_.daily_visible_at, plan_.revised_at if revised else None)


_MOVEMENT = {
    "1": ("1111111111", "1111111112", "1111211111", "1121111111"),
    "2": ("1111111111", "1112111111", "1111111121", "1211111111"),
    "3": ("1111111111", "1111121111", "1111111111", "2111111111"),
    "4": ("1223221111", "2111133211", "1111222111", "3322111122"),
}


def _phases(rng: random.Random, slots: int, latency_slots: int) -> str:
    out = ["4"] * min(latency_slots, slots)
    previous = "2"
    while len(out) < slots:
        position = len(out) / slots
        if rng.random() < 0.55:
            out.append(previous)
            continue
        draw = rng.random()
        deep = 0.32 * (1 - position) + 0.05
        rem = 0.08 + 0.25 * position
        if draw < 0.07:
            previous = "4"
        elif draw < 0.07 + deep:
            previous = "1"
        elif draw < 0.07 + deep + rem:
            previous = "3"
        else:
            previous = "2"
        out.append(previous)
    return "".join(out)


def _sleep_doc(
    user: UserProfile, plan_: DayPlan, period: Period, revised: bool, now: datetime | None
) -> Document:
    """A `sleep` document; with `now` inside the night, the in-progress variant (`bedtime_end: null`)."""
    rng = _rng("sleep", user.name, plan_.day.isoformat(), period.index)
    zone = user.zone
    end = period.end if now is None else min(now, period.end)
    time_in_bed = int((end - period.start).total_seconds())
    slots = max(1, time_in_bed // 300)
    latency_slots = rng.randint(0, 4)
    phases = _phases(rng, slots, latency_slots)
    hr_base = user.resting_hr + (2 if period.kind in ("sleep", "late_nap") else 0)
    hr_items: list[float | None] = []
    hrv_items: list[float | None] = []
    for i, phase in enumerate(phases):
        dip = 4 * (1 - abs(2 * i / slots - 1))
        bpm = hr_base + 6 - dip + (3 if phase == "4" else 0) + rng.uniform(-1.5, 1.5)
        hr_items.append(None if rng.random() < 0.03 else round(bpm, 1))
        hrv = user.base_hrv + dip * 3 + rng.uniform(-8, 8) - (10 if phase == "4" else 0)
        hrv_items.append(None if rng.random() < 0.08 else float(max(5, round(hrv))))
    hr_known = [v for v in hr_items if v is not None] or [float(hr_base)]
    hrv_known = [v for v in hrv_items if v is not None] or [float(user.base_hrv)]
    deep, light, rem = (phases.count(c) for c in "123")
    is_main = period == plan_.main_period
    in_progress = now is not None
    readiness = None
    if is_main and not in_progress and period.kind == "long_sleep":
        readiness = _readiness_body(user, plan_, revised)
    total = (deep + light + rem) * 300
    awake_time = max(0, time_in_bed - total)
    efficiency = _clamp(100 * total / time_in_bed) if time_in_bed else None
    doc: Document = {
        "id": document_id(user, "sleep", plan_.day, period.index),
        "average_breath": round(rng.uniform(13.0, 16.5), 3),
        "average_heart_rate": round(sum(hr_known) / len(hr_known), 3),
        "average_hrv": round(sum(hrv_known) / len(hrv_known)),
        "awake_time": None if in_progress else awake_time,
        "bedtime_end": None if in_progress else local_iso(zone, period.end),
        "bedtime_start": local_iso(zone, period.start),
        "day": plan_.day.isoformat(),
        "deep_sleep_duration": None if in_progress else deep * 300,
        "efficiency": None if in_progress else efficiency,
        "heart_rate": {"interval": 300.0, "items": hr_items, "timestamp": local_iso(zone, period.start)},
        "hrv": {"interval": 300.0, "items": hrv_items, "timestamp": local_iso(zone, period.start)},
        "latency": None if in_progress else latency_slots * 300 + rng.randint(0, 299),
        "light_sleep_duration": None if in_progress else light * 300,
        "low_battery_alert": rng.random() < 0.02,
        "lowest_heart_rate": round(min(hr_known)) - rng.randint(0, 2),
        "movement_30_sec": "".join(_MOVEMENT[c][rng.randrange(4)] for c in phases),
        "period": period.index,
        "readiness": readiness,
        "readiness_score_delta": None if is_main else rng.randint(-2, 3),
        "rem_sleep_duration": None if in_progress else rem * 300,
        "restless_periods": rng.randint(0, 12) * slots // 40,
        "sleep_algorithm_version": "v2",
        "sleep_analysis_reason": "background_sleep_analysis" if in_progress else "foreground_sleep_analysis",
        "sleep_phase_30_sec": None if in_progress else "".join(c * 10 for c in phases),
        "sleep_phase_5_min": phases,
        "sleep_score_delta": None if is_main else rng.randint(-1, 4),
        "time_in_bed": time_in_bed,
        "total_sleep_duration": None if in_progress else total,
        "type": period.kind,
        "ring_id": hashlib.blake2b(f"ring:{user.name}".encode(), digest_size=12).hexdigest(),
        "app_sleep_phase_5_min": phases,
    }
    if in_progress:
        return doc
    if revised and is_main and doc["efficiency"] is not None:
        doc["efficiency"] = _clamp(doc["efficiency"] + plan_.revision_delta // 2)
    return _with_meta(user, doc, period.visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=16384)
def _sleep_final(name: str, day: date, index: int, revised: bool) -> Document:
    plan_ = plan(name, day)
    return _sleep_doc(profile(name), plan_, plan_.periods[index], revised, None)


@lru_cache(maxsize=4096)
def _daily_activity(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = _rng("activity", name, day.isoformat())
    zone = user.zone
    start = _local_instant(zone, day, 4.0)
    classes = []
    for _ in range(288):
        draw = rng.random()
        classes.append("0" if draw < 0.04 else "2" if draw < 0.55 else "3" if draw < 0.9 else "4")

    def slots(a: datetime, b: datetime) -> range:
        first = (a - start).total_seconds() / 300
        return range(max(0, int(first)), min(288, -int(-(b - start).total_seconds() // 300)))

    for period in (*plan_.periods, *plan(name, day + timedelta(days=1)).periods):
        for slot in slots(period.start, period.end):
            classes[slot] = "1"
    for workout in plan_.workouts:
        for slot in slots(workout.start, workout.end):
            classes[slot] = "5" if slot % 3 else "4"
    class_5_min = "".join(classes)
    met_base = {"0": 0.0, "1": 0.9, "2": 1.2, "3": 2.5, "4": 4.5, "5": 7.5}
    jitter = [rng.uniform(-0.2, 0.2) for _ in range(16)] * 2
    tables = {c: [round(max(0.0, base + j), 1) for j in jitter] for c, base in met_base.items()}
    met_items: list[float | None] = []
    for slot, c in enumerate(class_5_min):
        offset = slot * 5 % 16
        met_items.extend(tables[c][offset : offset + 5])
    counts = {c: class_5_min.count(c) for c in "012345"}
    extra_steps = 600 + 150 * plan_.revision_delta if revised and plan_.revised_at else 0
    steps = int(counts["3"] * 110 + counts["4"] * 420 + counts["5"] * 700 + rng.randint(0, 900)) + max(
        0, extra_steps
    )
    active_calories = int(counts["3"] * 6 + counts["4"] * 18 + counts["5"] * 35)
    target_calories = rng.choice((350, 400, 450, 500, 550))
    score = _revise(plan_.activity_score, plan_.revision_delta, revised)
    doc: Document = {
        "id": document_id(user, "daily_activity", day, 0),
        "active_calories": active_calories,
        "average_met_minutes": round(sum(v for v in met_items if v) / 1440, 4),
        "class_5_min": class_5_min,
        "contributors": _contributors(rng, ACTIVITY_CONTRIBUTORS, score, 0.02),
        "day": day.isoformat(),
        "equivalent_walking_distance": int(steps * 0.78),
        "high_activity_met_minutes": counts["5"] * 5 * 8,
        "high_activity_time": counts["5"] * 300,
        "inactivity_alerts": rng.choice((0, 0, 0, 1, 1, 2, 3)),
        "low_activity_met_minutes": counts["3"] * 5 * 2,
        "low_activity_time": counts["3"] * 300,
        "medium_activity_met_minutes": counts["4"] * 5 * 4,
        "medium_activity_time": counts["4"] * 300,
        "met": {"interval": 60.0, "items": met_items, "timestamp": local_iso(zone, start)},
        "meters_to_target": max(0, 9000 - int(steps * 0.78)),
        "non_wear_time": counts["0"] * 300,
        "resting_time": counts["1"] * 300,
        "score": score,
        "sedentary_met_minutes": counts["2"] * 5,
        "sedentary_time": counts["2"] * 300,
        "steps": steps,
        "target_calories": target_calories,
        "target_meters": 9000,
        "timestamp": local_iso(zone, start),
        "total_calories": 1500 + active_calories + rng.randint(0, 300),
    }
    return _with_meta(user, doc, plan_.activity_visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=16384)
def _workout(name: str, day: date, index: int) -> Document:
    user, plan_ = profile(name), plan(name, day)
    span = plan_.workouts[index]
    rng = _rng("workout", name, day.isoformat(), index)
    minutes = (span.end - span.start).total_seconds() / 60
    has_distance = span.kind in ("walking", "running", "cycling", "hiking", "swimming")
    doc: Document = {
        "id": document_id(user, "workout", day, index),
        "activity": span.kind,
        "calories": round(minutes * rng.uniform(4.0, 11.0), 1),
        "day": day.isoformat(),
        "distance": round(minutes * rng.uniform(60, 250), 1) if has_distance else None,
        "end_datetime": local_iso(user.zone, span.end),
        "intensity": rng.choice(("easy", "moderate", "hard")),
        "label": rng.choice((None, None, None, "morning loop", "with friends")),
        "source": rng.choice(("manual", "autodetected", "confirmed", "workout_heart_rate")),
        "start_datetime": local_iso(user.zone, span.start),
    }
    return _with_meta(user, doc, span.visible_at, None)


@lru_cache(maxsize=16384)
def _session(name: str, day: date, index: int) -> Document:
    user, plan_ = profile(name), plan(name, day)
    span = plan_.sessions[index]
    rng = _rng("session", name, day.isoformat(), index)
    count = max(1, int((span.end - span.start).total_seconds() // 5))
    start = local_iso(user.zone, span.start)
    doc: Document = {
        "id": document_id(user, "session", day, index),
        "day": day.isoformat(),
        "end_datetime": local_iso(user.zone, span.end),
        "heart_rate": {
            "interval": 5.0,
            "items": [
                None if rng.random() < 0.05 else float(user.resting_hr + 8 + rng.randint(-3, 3))
                for _ in range(count)
            ],
            "timestamp": start,
        },
        "heart_rate_variability": {
            "interval": 5.0,
            "items": [
                None if rng.random() < 0.1 else float(user.base_hrv + rng.randint(-10, 10))
                for _ in range(count)
            ],
            "timestamp": start,
        },
        "mood": rng.choice((None, "bad", "worse", "same", "good", "great")),
        "motion_count": {
            "interval": 5.0,
            "items": [float(rng.randint(0, 3)) for _ in range(count)],
            "timestamp": start,
        },
        "start_datetime": start,
        "type": span.kind,
    }
    return _with_meta(user, doc, span.visible_at, None)


def _is_revised(plan_: DayPlan, now: datetime) -> bool:
    return plan_.revised_at is not None and plan_.revised_at <= now


def documents_for_day(name: str, collection: str, day: date, now: datetime) -> list[Document]:
    """The documents of `collection` whose `day` is `day`, as Oura would serve them at `now` (UTC)."""
    plan_ = plan(name, day)
    if not plan_.worn:
        return []
    revised = _is_revised(plan_, now)
    if collection == "daily_readiness":
        visible = plan_.daily_visible_at is not None and plan_.daily_visible_at <= now
        return [_daily_readiness(name, day, revised)] if visible else []
    if collection == "daily_sleep":
        visible = plan_.daily_visible_at is not None and plan_.daily_visible_at <= now
        return [_daily_sleep(name, day, revised)] if visible else []
    if collection == "daily_activity":
        visible = plan_.activity_visible_at is not None and plan_.activity_visible_at <= now
        return [_daily_activity(name, day, revised)] if visible else []
    if collection == "sleep":
        out: list[Document] = []
        main = plan_.main_period
        for period in plan_.periods:
            if period.visible_at <= now:
                out.append(_sleep_final(name, day, period.index, revised))
            elif plan_.in_progress and period == main and period.start + timedelta(minutes=45) <= now:
                out.append(_sleep_doc(profile(name), plan_, period, False, now))
        return out
    if collection == "workout":
        return [_workout(name, day, w.index) for w in plan_.workouts if w.visible_at <= now]
    if collection == "session":
        return [_session(name, day, s.index) for s in plan_.sessions if s.visible_at <= now]
    return []


def documents(name: str, collection: str, days: Iterable[date], now: datetime) -> list[Document]:
    out: list[Document] = []
    for day in days:
        out.extend(documents_for_day(name, collection, day, now))
    return out


def find_document(name: str, collection: str, document_id_: str, now: datetime) -> Document | None:
    """The document with this id, if it exists and has synced by `now`."""
    day = _day_of_id(profile(name), document_id_)
    if day is None:
        return None
    for doc in documents_for_day(name, collection, day, now):
        if doc["id"] == document_id_:
            return doc
    return None


def personal_info(name: str) -> Document:
    user = profile(name)
    return {
        "id": user.user_id,
        "age": user.age,
        "weight": user.weight,
        "height": user.height,
        "biological_sex": user.biological_sex,
        "email": user.email,
    }


@dataclass(frozen=True)
class HeartRateDay:
    """One local day's samples, sorted: epoch seconds, bpm and source, in parallel tuples."""

    epochs: tuple[int, ...]
    bpms: tuple[int, ...]
    sources: tuple[str, ...]


_EMPTY_DAY = HeartRateDay((), (), ())


@lru_cache(maxsize=4096)
def heart_rate_day(name: str, day: date) -> HeartRateDay:
    """Samples in the user's local day `day`: every 5 minutes while worn, every minute during workouts."""
    plan_ = plan(name, day)
    if not plan_.worn:
        return _EMPTY_DAY
    user = profile(name)
    rng = _rng("heartrate", name, day.isoformat())
    first = int(local_midnight(user.zone, day).timestamp())
    last = int(local_midnight(user.zone, day + timedelta(days=1)).timestamp())
    grid_start = -(-first // 300) * 300
    samples: dict[int, tuple[int, str]] = {}
    bpm = user.resting_hr + 20.0
    for epoch in range(grid_start, last, 300):
        bpm += rng.uniform(-4, 4) + (user.resting_hr + 20 - bpm) * 0.2
        if rng.random() < 0.72:
            samples[epoch] = (round(bpm), "live" if rng.random() < 0.01 else "awake")
    # This day's periods and the next day's (its night starts the evening before), each with its sleep day.
    periods = [(d, p) for d in (day, day + timedelta(days=1)) for p in plan(name, d).periods]
    for sleep_day, period in periods:
        hr_items = _sleep_final(name, sleep_day, period.index, False)["heart_rate"]["items"]
        source = "rest" if period.kind in ("rest", "deleted") else "sleep"
        start = int(period.start.timestamp())
        end = int(period.end.timestamp())
        for epoch in range(-(-start // 300) * 300, end, 300):
            if not first <= epoch < last:
                continue
            item = hr_items[min(len(hr_items) - 1, (epoch - start) // 300)]
            if item is None:
                samples.pop(epoch, None)
            else:
                samples[epoch] = (round(item), source)
    for session in plan_.sessions:
        for epoch in range(
            -(-int(session.start.timestamp()) // 300) * 300, int(session.end.timestamp()), 300
        ):
            samples[epoch] = (user.resting_hr + 8 + rng.randint(-3, 3), "session")
    for workout in plan_.workouts:
        start, end = int(workout.start.timestamp()), int(workout.end.timestamp())
        for epoch in range(-(-start // 300) * 300, end, 300):
            samples.pop(epoch, None)
        peak = rng.randint(125, 170)
        for epoch in range(-(-start // 60) * 60, end, 60):
            if first <= epoch < last:
                samples[epoch] = (peak + rng.randint(-15, 8), "workout")
    ordered = sorted(samples)
    return HeartRateDay(
        tuple(ordered), tuple(samples[e][0] for e in ordered), tuple(samples[e][1] for e in ordered)
    )


def heart_rate(name: str, start: datetime, end: datetime, now: datetime) -> list[tuple[int, int, str]]:
    """Samples with `start <= timestamp <= end` (both inclusive, as Oura answers), oldest first."""
    user = profile(name)
    visible_until = int((now - timedelta(minutes=user.hr_lag_min)).timestamp())
    lo, hi = int(start.timestamp()), min(int(end.timestamp()), visible_until)
    if hi < lo:
        return []
    first_day = start.astimezone(user.zone).date() - timedelta(days=1)
    last_day = datetime.fromtimestamp(hi, UTC).astimezone(user.zone).date() + timedelta(days=1)
    out: list[tuple[int, int, str]] = []
    day = first_day
    while day <= last_day:
        hr = heart_rate_day(name, day)
        i, j = bisect_left(hr.epochs, lo), bisect_right(hr.epochs, hi)
        out.extend(zip(hr.epochs[i:j], hr.bpms[i:j], hr.sources[i:j], strict=True))
        day += timedelta(days=1)
    return out


def heart_rate_row(name: str, epoch: int, bpm: int, source: str) -> Document:
    """One row as Oura renders it: the timestamp's format varies, some rows carry `producer_timestamp`."""
    instant = datetime.fromtimestamp(epoch, UTC)
    flavour = _hash("hr-format", name, epoch // 3600) % 3
    timestamp = instant.strftime("%Y-%m-%dT%H:%M:%S.000Z") if flavour == 0 else instant.isoformat()
    row: Document = {"bpm": bpm, "source": source, "timestamp": timestamp, "timestamp_unix": epoch * 1000}
    if _hash("producer", name, epoch) % 50 == 0:
        row["producer_timestamp"] = (instant + timedelta(seconds=37)).isoformat()
    return row
