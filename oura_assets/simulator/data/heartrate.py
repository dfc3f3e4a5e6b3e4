"""Heart rate: one local day's samples (5-minute grid while worn, the sleep periods' own values, sessions,
1-minute workout samples), queried across days and rendered the way Oura's rows vary."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import plan
from oura_assets.simulator.data.seeds import seeded_rng, stable_hash
from oura_assets.simulator.data.sleep import sleep_final
from oura_assets.simulator.data.users import Document, local_midnight, profile


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
    rng = seeded_rng("heartrate", name, day.isoformat())
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
        hr_items = sleep_final(name, sleep_day, period.index, False)["heart_rate"]["items"]
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
    flavour = stable_hash("hr-format", name, epoch // 3600) % 3
    timestamp = instant.strftime("%Y-%m-%dT%H:%M:%S.000Z") if flavour == 0 else instant.isoformat()
    row: Document = {"bpm": bpm, "source": source, "timestamp": timestamp, "timestamp_unix": epoch * 1000}
    if stable_hash("producer", name, epoch) % 50 == 0:
        row["producer_timestamp"] = (instant + timedelta(seconds=37)).isoformat()
    return row
