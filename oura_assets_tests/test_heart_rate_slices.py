"""`heart_rate_day_stats` cuts time-ordered samples into local-day slices: checked against a brute-force
count on shuffled samples with repeats at shared instants, offset changes and days without an offset."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import polars as pl

from oura_assets.normalize import heart_rate_day_stats, offset_for

START = datetime(2024, 3, 1, tzinfo=UTC)


def brute_force(samples, offsets, days):
    lowest = {}
    for ts, bpm, source in samples:
        key = (ts, source)
        lowest[key] = min(bpm, lowest.get(key, bpm))
    out = {}
    for day in days:
        offset = offset_for(day, offsets)
        low = datetime.combine(day, datetime.min.time(), tzinfo=UTC) - offset
        values = [bpm for (ts, _), bpm in lowest.items() if low <= ts < low + timedelta(days=1)]
        if values:
            out[day] = (min(values), max(values), sum(values) / len(values), len(values), offset)
    return out


def test_slices_match_a_brute_force_count():
    rng = random.Random(7)
    samples = []
    for i in range(4000):
        ts = START + timedelta(seconds=rng.randrange(0, 6 * 86400))
        for source in rng.sample(["awake", "rest", "sleep", None], rng.randint(1, 3)):
            samples.append((ts, rng.randint(40, 180), source))
            if i % 7 == 0:
                samples.append(
                    (ts, rng.randint(40, 180), source)
                )  # a copy with another bpm: the lower counts
    rng.shuffle(samples)
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(-1, 7)]
    offsets = {
        date(2024, 3, 1): timedelta(hours=-7),
        date(2024, 3, 3): timedelta(hours=-8),
        date(2024, 3, 4): timedelta(hours=5, minutes=30),
        date(2024, 3, 6): timedelta(hours=14),
    }
    frame = pl.DataFrame(
        {
            "timestamp": [s[0] for s in samples],
            "bpm": [s[1] for s in samples],
            "source": [s[2] for s in samples],
        },
        schema={"timestamp": pl.Datetime("us", "UTC"), "bpm": pl.Int64, "source": pl.String},
    )
    stats = heart_rate_day_stats(frame, offsets, days)
    expected = brute_force(samples, offsets, days)
    assert {
        d: (s.hr_min, s.hr_max, s.hr_avg, s.hr_samples, s.utc_offset) for d, s in stats.items()
    } == expected
    assert sum(s.hr_samples for s in stats.values()) > 0
