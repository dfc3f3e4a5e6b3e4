"""The daily summaries: `daily_readiness`, `daily_sleep` and `daily_activity` documents of one user's day."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import DayPlan, plan
from oura_assets.simulator.data.identity import document_id, with_meta
from oura_assets.simulator.data.seeds import clamp, seeded_rng
from oura_assets.simulator.data.users import (
    Document,
    UserProfile,
    local_instant,
    local_iso,
    local_midnight,
    profile,
)


def _contributors(rng: random.Random, keys: Iterable[str], level: int | None, null_rate: float) -> Document:
    base = 70 if level is None else level
    return {key: None if rng.random() < null_rate else clamp(rng.gauss(base, 12)) for key in keys}


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
    return value if value is None or not revised else clamp(value + delta)


def readiness_body(user: UserProfile, plan_: DayPlan, revised: bool) -> Document:
    rng = seeded_rng("readiness", user.name, plan_.day.isoformat())
    score = _revise(plan_.readiness_score, plan_.revision_delta, revised)
    contributors = _contributors(rng, READINESS_CONTRIBUTORS, score, 0.03)
    return {
        "contributors": contributors,
        "score": score,
        "temperature_deviation": None if score is None else round(rng.gauss(0, 0.35), 2),
        "temperature_trend_deviation": None if score is None else round(rng.gauss(0, 0.2), 2),
    }


@lru_cache(maxsize=32768)
def daily_readiness(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    doc_id = document_id(user, "daily_readiness", day, 0)
    doc: Document = {"id": doc_id, "day": day.isoformat(), **readiness_body(user, plan_, revised)}
    doc["timestamp"] = local_iso(user.zone, local_midnight(user.zone, day))
    return with_meta(user, doc, plan_.daily_visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=32768)
def daily_sleep(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("daily_sleep", name, day.isoformat())
    score = _revise(plan_.sleep_score, plan_.revision_delta, revised)
    doc: Document = {
        "id": document_id(user, "daily_sleep", day, 0),
        "contributors": _contributors(rng, SLEEP_CONTRIBUTORS, score, 0.02),
        "day": day.isoformat(),
        "score": score,
        "timestamp": local_iso(user.zone, local_midnight(user.zone, day)),
    }
    return with_meta(user, doc, plan_.daily_visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=4096)
def daily_activity(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("activity", name, day.isoformat())
    zone = user.zone
    start = local_instant(zone, day, 4.0)
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
    return with_meta(user, doc, plan_.activity_visible_at, plan_.revised_at if revised else None)
