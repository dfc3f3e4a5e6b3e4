"""Heart rate: one local day's samples, queried across days and rendered the way Oura's rows vary.

As real rows come: while awake about every 5 minutes but at odd seconds, not on a grid; during a sleep period
its own 5-minute series from the period's start; during sessions every 5 minutes from the session's start;
during workouts bursts every few seconds (source `workout`). Nothing while the ring is off: days not worn,
the night of a day worn only by day and the daytime of a day worn only at night.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import plan
from oura_assets.simulator.data.seeds import seeded_rng, stable_hash
from oura_assets.simulator.data.sleep import sleep_final
from oura_assets.simulator.data.users import Document, local_instant, local_midnight, profile


@dataclass(frozen=True)
class HeartRateDay:
    """One local day's samples, sorted: epoch seconds, bpm and source, in parallel tuples."""

    epochs: tuple[int, ...]
    bpms: tuple[int, ...]
    sources: tuple[str, ...]


_EMPTY_DAY = HeartRateDay((), (), ())


def _clear(samples: dict[int, tuple[int, str]], start: int, end: int) -> None:
    for epoch in [e for e in samples if start <= e < end]:
        del samples[epoch]


def _ring_off(name: str, day: date, first: int, last: int) -> list[tuple[int, int]]:
    """The spans of the local day `day` in which the ring was off though the day counts as worn."""
    user, plan_ = profile(name), plan(name, day)
    spans = []
    if plan_.night_off:
        spans.append((first, int(local_instant(user.zone, day, 7.5).timestamp())))
    if plan(name, day + timedelta(days=1)).night_off:
        spans.append((int(local_instant(user.zone, day, 22.5).timestamp()), last))
    main = plan_.main_period
    if plan_.day_off and main is not None:
        spans.append((int(main.end.timestamp()) + 3600, int(local_instant(user.zone, day, 21.0).timestamp())))
    return spans


@lru_cache(maxsize=4096)
def heart_rate_day(name: str, day: date) -> HeartRateDay:
    """Samples in the user's local day `day` (see the module docstring for their rhythm)."""
    plan_ = plan(name, day)
    if not plan_.worn:
        return _EMPTY_DAY
    user = profile(name)
    rng = seeded_rng("heartrate", name, day.isoformat())
    first = int(local_midnight(user.zone, day).timestamp())
    last = int(local_midnight(user.zone, day + timedelta(days=1)).timestamp())
    grid_start = -(-first // 300) * 300
    samples: dict[int, tuple[int, str]] = {}
    bpm = user.resting_hr + 20.0
    for slot in range(grid_start, last, 300):
        bpm += rng.uniform(-4, 4) + (user.resting_hr + 20 - bpm) * 0.2
        if rng.random() < 0.72:
            source = "live" if rng.random() < 0.01 else "awake"
            epoch = slot + rng.randint(0, 299)
            if epoch < last:
                samples[epoch] = (round(bpm), source)
    for start, end in _ring_off(name, day, first, last):
        _clear(samples, start, end)
    # This day's periods and the next day's (its night starts the evening before), each with its sleep day.
    periods = [(d, p) for d in (day, day + timedelta(days=1)) for p in plan(name, d).periods]
    for sleep_day, period in periods:
        hr_items = sleep_final(name, sleep_day, period.index, False)["heart_rate"]["items"]
        source = "rest" if period.kind in ("rest", "deleted") else "sleep"
        start = int(period.start.timestamp())
        end = int(period.end.timestamp())
        _clear(samples, start, end)
        for index, item in enumerate(hr_items):
            epoch = start + index * 300
            if item is not None and first <= epoch < min(end, last):
                samples[epoch] = (round(item), source)
    for session in plan_.sessions:
        start, end = int(session.start.timestamp()), int(session.end.timestamp())
        _clear(samples, start, end)
        for epoch in range(start, end, 300):
            samples[epoch] = (user.resting_hr + 8 + rng.randint(-3, 3), "session")
    for workout in plan_.workouts:
        start, end = int(workout.start.timestamp()), int(workout.end.timestamp())
        _clear(samples, start, end)
        # A workout's heart rate comes in bursts, a sample every few seconds.
        bpm = float(rng.randint(110, 150))
        epoch = start
        while epoch < end:
            bpm = min(190.0, max(90.0, bpm + rng.uniform(-3, 3.2)))
            if first <= epoch < last:
                samples[epoch] = (round(bpm), "workout")
            epoch += rng.randint(3, 15)
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
    flavour = stable_hash("hr-format", name, epoch // 3600) % 3
    timestamp = instant.strftime("%Y-%m-%dT%H:%M:%S.000Z") if flavour == 0 else instant.isoformat()
    row: Document = {"bpm": bpm, "source": source, "timestamp": timestamp, "timestamp_unix": epoch * 1000}
    if stable_hash("producer", name, epoch) % 50 == 0:
        row["producer_timestamp"] = (instant + timedelta(seconds=37)).isoformat()
    return row
