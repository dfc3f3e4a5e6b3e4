"""A simulated Oura account: its fixed traits, derived from its name, its time zone and its personal info."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from oura_assets.simulator.data.seeds import seeded_rng, stable_hash

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
    rng = seeded_rng("profile", name)
    sex = rng.choice(("female", "male"))
    return UserProfile(
        name=name,
        user_id=str(
            uuid.UUID(bytes=hashlib.blake2b(f"user:{name}".encode(), digest_size=16).digest(), version=4)
        ),
        zone=ZoneInfo(ZONES[stable_hash("zone", name) % len(ZONES)]),
        id_mask=stable_hash("id-mask", name) & 0xFFFFFF,
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


def local_instant(zone: ZoneInfo, day: date, hours: float) -> datetime:
    """The UTC instant at a local wall-clock time `hours` after `day`'s midnight."""
    wall = datetime.combine(day, time()) + timedelta(hours=hours)
    return wall.replace(tzinfo=zone, second=0, microsecond=0).astimezone(UTC)


def local_iso(zone: ZoneInfo, instant: datetime) -> str:
    return instant.astimezone(zone).replace(microsecond=0).isoformat()


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
