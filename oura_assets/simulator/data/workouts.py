"""`workout` and `session` documents: one per span the day's plan holds."""

from __future__ import annotations

from datetime import date
from functools import lru_cache

from oura_assets.simulator.data.days import plan
from oura_assets.simulator.data.identity import document_id, with_meta
from oura_assets.simulator.data.seeds import seeded_rng
from oura_assets.simulator.data.users import Document, local_iso, profile


@lru_cache(maxsize=16384)
def workout(name: str, day: date, index: int) -> Document:
    user, plan_ = profile(name), plan(name, day)
    span = plan_.workouts[index]
    rng = seeded_rng("workout", name, day.isoformat(), index)
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
    return with_meta(user, doc, span.visible_at, None)


@lru_cache(maxsize=16384)
def session(name: str, day: date, index: int) -> Document:
    user, plan_ = profile(name), plan(name, day)
    span = plan_.sessions[index]
    rng = seeded_rng("session", name, day.isoformat(), index)
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
    return with_meta(user, doc, span.visible_at, None)
