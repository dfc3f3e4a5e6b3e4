"""`sleep` documents: one per detected period, with 5-minute phases, heart rate and HRV, and the in-progress
variant (`bedtime_end: null`) served while the night has not synced."""

from __future__ import annotations

import hashlib
import random
from datetime import date, datetime
from functools import lru_cache

from oura_assets.simulator.data.daily import readiness_body
from oura_assets.simulator.data.days import DayPlan, Period, plan
from oura_assets.simulator.data.identity import document_id, with_meta
from oura_assets.simulator.data.seeds import clamp, seeded_rng
from oura_assets.simulator.data.users import Document, UserProfile, local_iso, profile

_MOVEMENT = {
    "1": ("1111111111", "1111111112", "1111211111", "1121111111"),
    "2": ("1111111111", "1112111111", "1111111121", "1211111111"),
    "3": ("1111111111", "1111121111", "1111111111", "2111111111"),
    "4": ("1223221111", "2111133211", "1111222111", "3322111122"),
}


def _phases(rng: random.Random, slots: int, latency_slots: int, *, nap: bool = False) -> str:
    """5-minute phases (1 deep, 2 light, 3 REM, 4 awake). A nap wakes less often and not for long."""
    out = ["4"] * min(latency_slots, slots)
    previous = "2"
    awake = 0.03 if nap else 0.07
    while len(out) < slots:
        position = len(out) / slots
        if rng.random() < 0.55 and not (nap and previous == "4"):
            out.append(previous)
            continue
        draw = rng.random()
        deep = 0.32 * (1 - position) + 0.05
        rem = 0.08 + 0.25 * position
        if draw < awake:
            previous = "4"
        elif draw < awake + deep:
            previous = "1"
        elif draw < awake + deep + rem:
            previous = "3"
        else:
            previous = "2"
        out.append(previous)
    return "".join(out)


def sleep_doc(
    user: UserProfile, plan_: DayPlan, period: Period, revised: bool, now: datetime | None
) -> Document:
    """A `sleep` document; with `now` inside the night, the in-progress variant (`bedtime_end: null`)."""
    rng = seeded_rng("sleep", user.name, plan_.day.isoformat(), period.index)
    zone = user.zone
    end = period.end if now is None else min(now, period.end)
    time_in_bed = int((end - period.start).total_seconds())
    slots = max(1, time_in_bed // 300)
    # A nap (a `sleep` or `late_nap` period that is not the day's main sleep) is short, 15 minutes or more,
    # and mostly asleep: Oura reports naps with efficiencies like a night's, not near zero.
    is_nap = period.kind in ("sleep", "late_nap") and period != plan_.main_period
    latency_slots = rng.randint(0, 1 if is_nap else 4)
    phases = _phases(rng, slots, latency_slots, nap=is_nap)
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
        readiness = readiness_body(user, plan_, revised)
    total = (deep + light + rem) * 300
    awake_time = max(0, time_in_bed - total)
    efficiency = clamp(100 * total / time_in_bed) if time_in_bed else None
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
        doc["efficiency"] = clamp(doc["efficiency"] + plan_.revision_delta // 2)
    return with_meta(user, doc, period.visible_at, plan_.revised_at if revised else None)


@lru_cache(maxsize=16384)
def sleep_final(name: str, day: date, index: int, revised: bool) -> Document:
    plan_ = plan(name, day)
    return sleep_doc(profile(name), plan_, plan_.periods[index], revised, None)
