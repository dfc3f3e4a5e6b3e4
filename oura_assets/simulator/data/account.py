"""What the user tells Oura or owns rather than what the ring measures: the ring itself
(`ring_configuration`), rest mode (`rest_mode_period`) and the tags the user adds (`tag`, `enhanced_tag`).

Like the rest of the world, each is drawn from dice of its own seeded by user and day, so serving them
changed nothing in the other collections.
- `ring_configuration` is not dated: every ring the user has set up, served whatever the date range (the route
  takes no dates [spec]); some users replaced their first ring.
- A `rest_mode_period` (the user told Oura they are ill or recovering) lasts 2-6 days with a tagged episode or
  two; one still running on the data clock has no end yet. Periods are listed by `start_day`.
- Tags are entered in the app, so they reach the cloud when the user next opens it: `enhanced_tag` (the
  current model, listed by `start_day`) and the deprecated `tag` model (listed by `day`), on some days each.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.days import plan
from oura_assets.simulator.data.identity import document_id
from oura_assets.simulator.data.seeds import seeded_rng, stable_hash
from oura_assets.simulator.data.users import Document, local_instant, local_iso, profile

RING_EPOCH = date(2021, 3, 1)
ENHANCED_TAG_CODES = (
    ("tag_generic_alcohol", None),
    ("tag_generic_caffeine", None),
    ("tag_generic_late_meal", None),
    ("tag_generic_stress", None),
    ("tag_generic_sauna", None),
    ("tag_generic_nocaffeine", None),
    ("custom", "cold plunge"),
)
TAG_TEXTS = (
    ("tag_generic_alcohol",),
    ("tag_generic_caffeine",),
    ("tag_generic_late_meal", "tag_generic_alcohol"),
    ("tag_generic_stress",),
)
REST_MODE_TAGS = ("tag_generic_sick", "tag_generic_fever", "tag_generic_headache", "tag_generic_fatigue")
REST_MODE_RATE = 0.012
REST_MODE_MAX_DAYS = 6


@lru_cache(maxsize=4096)
def ring_configurations(name: str) -> tuple[Document, ...]:
    """Every ring the user set up, oldest first (about one user in four replaced their first ring)."""
    user = profile(name)
    rng = seeded_rng("ring_configuration", name)
    first = RING_EPOCH + timedelta(days=stable_hash("ring-setup", name) % 900)
    setups = [first]
    if rng.random() < 0.25:
        setups.append(first + timedelta(days=rng.randint(200, 700)))
    rings = []
    for index, day in enumerate(setups):
        newer = index == len(setups) - 1 and len(setups) > 1
        rings.append(
            {
                "id": document_id(user, "ring_configuration", day, index),
                "color": rng.choice(("brushed_silver", "stealth_black", "silver", "glossy_gold", "rose")),
                "design": rng.choice(("heritage", "horizon")),
                "firmware_version": f"2.{rng.randint(7, 9)}.{rng.randint(0, 30)}",
                "hardware_type": "gen4" if newer else rng.choice(("gen3", "gen3", "gen4")),
                "set_up_at": datetime.combine(day, datetime.min.time(), tzinfo=UTC)
                .replace(hour=rng.randint(8, 21), minute=rng.randint(0, 59))
                .isoformat(),
                "size": rng.randint(6, 13),
            }
        )
    return tuple(rings)


def ring_configurations_at(name: str, now: datetime) -> list[Document]:
    """The rings set up by `now`."""
    return [ring for ring in ring_configurations(name) if datetime.fromisoformat(ring["set_up_at"]) <= now]


def _rest_mode_starts(name: str, day: date) -> bool:
    return seeded_rng("rest-mode-start", name, day.isoformat()).random() < REST_MODE_RATE


def rest_mode_starts_on(name: str, day: date) -> bool:
    """Whether a rest mode period starts on `day`: its dice say so and no period is still running then."""
    if not _rest_mode_starts(name, day):
        return False
    return not any(
        _rest_mode_starts(name, day - timedelta(days=back)) for back in range(1, REST_MODE_MAX_DAYS + 1)
    )


@lru_cache(maxsize=4096)
def _rest_mode_bounds(name: str, day: date) -> tuple[datetime, datetime, int]:
    user = profile(name)
    rng = seeded_rng("rest-mode", name, day.isoformat())
    start = local_instant(user.zone, day, rng.uniform(7.0, 11.0))
    end = start + timedelta(days=rng.randint(2, REST_MODE_MAX_DAYS - 1), hours=rng.uniform(0, 10))
    return start, end, rng.randint(1, 2)


def rest_mode_period(name: str, day: date, now: datetime) -> Document | None:
    """The rest mode period starting on `day` as of `now` (no end yet while it runs), if there is one."""
    if not rest_mode_starts_on(name, day):
        return None
    user = profile(name)
    start, end, episodes = _rest_mode_bounds(name, day)
    if start > now:
        return None
    rng = seeded_rng("rest-mode-episodes", name, day.isoformat())
    running = end > now
    return {
        "id": document_id(user, "rest_mode_period", day, 0),
        "end_day": None if running else end.astimezone(user.zone).date().isoformat(),
        "end_time": None if running else local_iso(user.zone, end),
        "episodes": [
            {
                "tags": sorted(set(rng.sample(REST_MODE_TAGS, rng.randint(1, 2)))),
                "timestamp": local_iso(user.zone, start + timedelta(hours=20 * n)),
            }
            for n in range(episodes)
            if start + timedelta(hours=20 * n) <= now
        ],
        "start_day": day.isoformat(),
        "start_time": local_iso(user.zone, start),
    }


def _tag_visible_at(name: str, day: date) -> datetime:
    """Tags reach the cloud when the user next opens the app: the day's sync, else the evening after."""
    plan_ = plan(name, day)
    return plan_.daily_visible_at or local_instant(profile(name).zone, day, 21.0)


def enhanced_tags(name: str, day: date, now: datetime) -> list[Document]:
    if _tag_visible_at(name, day) > now:
        return []
    user = profile(name)
    rng = seeded_rng("enhanced_tag", name, day.isoformat())
    if rng.random() >= 0.22:
        return []
    out = []
    for index in range(1 if rng.random() < 0.8 else 2):
        code, custom = rng.choice(ENHANCED_TAG_CODES)
        start = local_instant(user.zone, day, rng.uniform(8.0, 22.0))
        lasting = rng.random() < 0.3
        end = start + timedelta(minutes=rng.randint(10, 90)) if lasting else None
        out.append(
            {
                "id": document_id(user, "enhanced_tag", day, index),
                "tag_type_code": code,
                "start_time": local_iso(user.zone, start),
                "end_time": None if end is None else local_iso(user.zone, end),
                "start_day": day.isoformat(),
                "end_day": None if end is None else end.astimezone(user.zone).date().isoformat(),
                "comment": rng.choice((None, None, "felt it the next morning", "after dinner")),
                "custom_name": custom,
            }
        )
    return out


def tags(name: str, day: date, now: datetime) -> list[Document]:
    if _tag_visible_at(name, day) > now:
        return []
    user = profile(name)
    rng = seeded_rng("tag", name, day.isoformat())
    if rng.random() >= 0.1:
        return []
    at = local_instant(user.zone, day, rng.uniform(18.0, 23.0))
    return [
        {
            "id": document_id(user, "tag", day, 0),
            "day": day.isoformat(),
            "text": rng.choice((None, "wine with dinner", "espresso after lunch")),
            "timestamp": local_iso(user.zone, at),
            "tags": list(rng.choice(TAG_TEXTS)),
        }
    ]
