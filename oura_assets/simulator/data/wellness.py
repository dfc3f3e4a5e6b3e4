"""The newer daily collections: `daily_spo2`, `daily_stress`, `daily_resilience`, `daily_cardiovascular_age`,
`vO2_max` and `sleep_time`, one user's day at a time.

Each is drawn from dice of its own (seeded by collection, user and day), so serving them changed nothing in the
older collections. What each needs and when it reaches the cloud follows Oura's own description [spec]:
- measured during sleep (SpO2, cardiovascular age, the bedtime recommendation): only on days with a night, and
  only once the phone synced that night (`daily_visible_at`, like the sleep score);
- measured over the day (stress): only on days the ring was worn by day, synced in the background once the day
  has closed (`activity_visible_at`, like the activity document), and revised with the day's other scores;
- resilience weighs both: only on days with a night and a day, once both synced;
- VO2 max is an estimate Oura makes now and then after a walk, not every day.
A day the ring was not worn has none of them.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import DayPlan, plan
from oura_assets.simulator.data.identity import document_id, with_meta
from oura_assets.simulator.data.seeds import clamp, seeded_rng, stable_hash
from oura_assets.simulator.data.users import Document, UserProfile, local_instant, local_iso, profile

RESILIENCE_LEVELS = ("limited", "adequate", "solid", "strong", "exceptional")


def _user_level(user: UserProfile, name: str) -> float:
    """A per-user baseline in [0, 1) that the wellness figures lean on, so a user's days look alike."""
    return (stable_hash("wellness-level", name) % 1000) / 1000


def has_night(plan_: DayPlan) -> bool:
    return plan_.worn and plan_.main_period is not None and plan_.daily_visible_at is not None


def has_day(plan_: DayPlan) -> bool:
    return plan_.worn and plan_.activity_visible_at is not None


def night_visible_at(plan_: DayPlan) -> datetime | None:
    return plan_.daily_visible_at if has_night(plan_) else None


def day_visible_at(plan_: DayPlan) -> datetime | None:
    return plan_.activity_visible_at if has_day(plan_) else None


def resilience_visible_at(plan_: DayPlan) -> datetime | None:
    night, day = night_visible_at(plan_), day_visible_at(plan_)
    return max(night, day) if night is not None and day is not None else None


@lru_cache(maxsize=16384)
def daily_spo2(name: str, day: date) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("daily_spo2", name, day.isoformat())
    # Oura leaves the figures null on nights it could not measure (too short, too much movement).
    measured = rng.random() >= 0.06
    average = round(min(99.9, rng.gauss(96.6, 0.9) + 0.8 * _user_level(user, name)), 3)
    bdi = max(0, min(100, round(rng.expovariate(1 / 6))))
    doc: Document = {
        "id": document_id(user, "daily_spo2", day, 0),
        "breathing_disturbance_index": bdi if measured else None,
        "day": day.isoformat(),
        "spo2_percentage": {"average": average} if measured else None,
    }
    return with_meta(user, doc, plan_.daily_visible_at, None)


@lru_cache(maxsize=16384)
def daily_stress(name: str, day: date, revised: bool) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("daily_stress", name, day.isoformat())
    stress_high = 300 * rng.randint(0, 60)
    recovery_high = 300 * rng.randint(0, 40)
    if revised and plan_.revised_at is not None:
        # Recomputed with the rest of the day's scores: a few more or fewer 5-minute stress slots.
        stress_high = max(0, stress_high - 300 * plan_.revision_delta)
    if stress_high > 2 * recovery_high + 3600:
        summary: str | None = "stressful"
    elif recovery_high > stress_high + 1800:
        summary = "restored"
    else:
        summary = "normal"
    doc: Document = {
        "id": document_id(user, "daily_stress", day, 0),
        "day": day.isoformat(),
        "day_summary": None if rng.random() < 0.05 else summary,
        "recovery_high": recovery_high,
        "stress_high": stress_high,
    }
    return with_meta(user, doc, plan_.activity_visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=16384)
def daily_resilience(name: str, day: date) -> Document:
    user = profile(name)
    rng = seeded_rng("daily_resilience", name, day.isoformat())
    # Resilience is a long-term figure: it drifts over fortnights around the user's own level.
    fortnight = seeded_rng("resilience-fortnight", name, day.toordinal() // 14).uniform(-0.15, 0.15)
    level = min(0.999, max(0.0, _user_level(user, name) + fortnight + rng.uniform(-0.04, 0.04)))
    contributors = {
        "sleep_recovery": round(max(0.0, min(100.0, rng.gauss(40 + 50 * level, 8))), 1),
        "daytime_recovery": round(max(0.0, min(100.0, rng.gauss(30 + 50 * level, 10))), 1),
        "stress": round(max(0.0, min(100.0, rng.gauss(35 + 45 * level, 10))), 1),
    }
    return {
        "id": document_id(user, "daily_resilience", day, 0),
        "day": day.isoformat(),
        "contributors": contributors,
        "level": RESILIENCE_LEVELS[int(level * len(RESILIENCE_LEVELS))],
    }


@lru_cache(maxsize=16384)
def daily_cardiovascular_age(name: str, day: date) -> Document:
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("daily_cardiovascular_age", name, day.isoformat())
    offset = round((0.5 - _user_level(user, name)) * 12)
    vascular_age = clamp(user.age + offset + rng.choice((-1, 0, 0, 0, 1)), 18, 100)
    measured = rng.random() >= 0.05
    doc: Document = {
        "id": document_id(user, "daily_cardiovascular_age", day, 0),
        "day": day.isoformat(),
        # Pulse wave velocity rises with vascular age (about 5 m/s at 20, 11 m/s at 80).
        "pulse_wave_velocity": round(3.2 + 0.1 * vascular_age + rng.uniform(-0.2, 0.2), 2) if measured else None,
        "vascular_age": vascular_age if measured else None,
    }
    return with_meta(user, doc, plan_.daily_visible_at, None)


def vo2_max_estimated(name: str, day: date) -> bool:
    """Whether Oura made a VO2 max estimate that day: now and then, after a walk (about once a week)."""
    return seeded_rng("vo2-max-day", name, day.isoformat()).random() < 0.14


@lru_cache(maxsize=16384)
def vo2_max(name: str, day: date) -> Document:
    user = profile(name)
    rng = seeded_rng("vO2_max", name, day.isoformat())
    base = 52 - 0.3 * (user.age - 20) + 12 * _user_level(user, name)
    made = local_instant(user.zone, day, rng.uniform(9.0, 20.0))
    return {
        "id": document_id(user, "vO2_max", day, 0),
        "day": day.isoformat(),
        "timestamp": local_iso(user.zone, made),
        "vo2_max": max(18, round(base + rng.uniform(-1.5, 1.5))),
    }


def vo2_max_visible_at(name: str, day: date) -> datetime | None:
    plan_ = plan(name, day)
    if not has_day(plan_) or not vo2_max_estimated(name, day):
        return None
    return plan_.activity_visible_at


@lru_cache(maxsize=16384)
def sleep_time(name: str, day: date) -> Document:
    """The bedtime Oura recommends for the night that ends on the next day, from the nights before."""
    user, plan_ = profile(name), plan(name, day)
    rng = seeded_rng("sleep_time", name, day.isoformat())
    zone_offset = local_instant(user.zone, day, 12.0).astimezone(user.zone).utcoffset() or timedelta(0)
    status = rng.choices(
        ("optimal_found", "only_recommended_found", "not_enough_recent_nights", "bad_sleep_quality"),
        weights=(70, 15, 10, 5),
    )[0]
    window = None
    if status in ("optimal_found", "only_recommended_found"):
        # Offsets are seconds from the day's midnight: an evening bedtime is negative (before midnight).
        centre = round((user.bedtime_h - 24) * 3600 / 900) * 900 + 900 * rng.randint(-1, 1)
        window = {
            "day_tz": int(zone_offset.total_seconds()),
            "end_offset": centre + 1800,
            "start_offset": centre - 1800,
        }
    recommendation = {
        "optimal_found": "follow_optimal_bedtime",
        "only_recommended_found": rng.choice(("earlier_bedtime", "later_bedtime")),
        "not_enough_recent_nights": None,
        "bad_sleep_quality": "improve_efficiency",
    }[status]
    doc: Document = {
        "id": document_id(user, "sleep_time", day, 0),
        "day": day.isoformat(),
        "optimal_bedtime": window,
        "recommendation": recommendation,
        "status": status,
    }
    return with_meta(user, doc, plan_.daily_visible_at, None)
