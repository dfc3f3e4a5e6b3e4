"""`workout` and `session` documents: one per span of the day.

The day's plan (`days.py`) holds at most one workout and one session, and the daily activity and heart rate
are drawn around them. Real days hold more: a second, autodetected walk beside a planned run, or a `nap`
Moment the user started for an afternoon nap. Those come from dice of their own (`extra_workouts`,
`nap_sessions`), so adding them left every other collection of the day byte for byte as it was (tests and
benchmarks compare against it). The price: the extra walk does not show in that day's `class_5_min` or heart
rate, and a nap session's heart rate is its own series rather than the nap period's.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import Span, plan
from oura_assets.simulator.data.identity import document_id, with_meta
from oura_assets.simulator.data.seeds import seeded_rng
from oura_assets.simulator.data.users import Document, local_instant, local_iso, profile

EXTRA_WORKOUT_RATE = 0.15
NAP_SESSION_RATE = 0.5


@lru_cache(maxsize=65536)
def workout_spans(name: str, day: date) -> tuple[Span, ...]:
    """The day's workouts: the plan's, then (on some days) an autodetected walk that does not overlap it."""
    plan_ = plan(name, day)
    spans = plan_.workouts
    if not plan_.worn or plan_.day_off:
        return spans
    rng = seeded_rng("day-extra-workout", name, day.isoformat())
    if rng.random() >= EXTRA_WORKOUT_RATE:
        return spans
    start = local_instant(profile(name).zone, day, rng.uniform(11.0, 13.5))
    end = start + timedelta(minutes=rng.randint(20, 45))
    for other in spans:
        if start < other.end and other.start < end:
            start = other.end + timedelta(minutes=rng.randint(30, 90))
            end = start + timedelta(minutes=rng.randint(20, 45))
    delay = timedelta(hours=profile(name).app_delay_h * rng.uniform(0.5, 1.5))
    return (*spans, Span(len(spans), "walking", start, end, end + delay))


@lru_cache(maxsize=65536)
def session_spans(name: str, day: date) -> tuple[Span, ...]:
    """The day's sessions: the plan's, then a `nap` Moment over an afternoon nap on some of the days with one."""
    plan_ = plan(name, day)
    spans = plan_.sessions
    naps = [p for p in plan_.periods if p.kind == "sleep" and p != plan_.main_period]
    if not naps:
        return spans
    rng = seeded_rng("day-nap-session", name, day.isoformat())
    if rng.random() >= NAP_SESSION_RATE:
        return spans
    nap = naps[0]
    start = nap.start - timedelta(minutes=rng.randint(1, 8))
    return (*spans, Span(len(spans), "nap", start, nap.end, nap.visible_at))


@lru_cache(maxsize=16384)
def workout(name: str, day: date, index: int) -> Document:
    user = profile(name)
    span = workout_spans(name, day)[index]
    rng = seeded_rng("workout", name, day.isoformat(), index)
    minutes = (span.end - span.start).total_seconds() / 60
    has_distance = span.kind in ("walking", "running", "cycling", "hiking", "swimming")
    extra = index >= len(plan(name, day).workouts)
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
    if extra:
        # The extra walk is what the ring noticed on its own: easy, autodetected, no label.
        doc.update(intensity="easy", label=None, source="autodetected")
    return with_meta(user, doc, span.visible_at, None)


@lru_cache(maxsize=16384)
def session(name: str, day: date, index: int) -> Document:
    user = profile(name)
    span = session_spans(name, day)[index]
    rng = seeded_rng("session", name, day.isoformat(), index)
    count = max(1, int((span.end - span.start).total_seconds() // 5))
    start = local_iso(user.zone, span.start)
    # A nap's heart rate settles below the waking rate; a breathing or meditation session's stays near it.
    level = user.resting_hr + (2 if span.kind == "nap" else 8)
    doc: Document = {
        "id": document_id(user, "session", day, index),
        "day": day.isoformat(),
        "end_datetime": local_iso(user.zone, span.end),
        "heart_rate": {
            "interval": 5.0,
            "items": [
                None if rng.random() < 0.05 else float(level + rng.randint(-3, 3)) for _ in range(count)
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
    return with_meta(user, doc, span.visible_at, None)
