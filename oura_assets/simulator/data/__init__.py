"""Deterministic Oura data for any user name on any day: the simulated world behind the API routes.

Everything is derived from hashes, never stored, so two simulator instances (or a restart) agree on every id
and value, and any date can be asked for in any order. The model, which clients must cope with:

- A user is any name. `profile(name)` derives the user's habits from a hash of the name: a time zone (fixed
  offsets from -03:00 to +09:00 including +05:30, and zones that observe DST, so the offset carried by the
  documents changes during the year), how often the ring is left off, bedtime, how late the user opens the
  app, how often and how late Oura revises a day.
- A day (`plan(name, day)`) is derived from a hash of (name, day). About 5-10 % of days are not worn: no
  documents at all and no heart rate in that local day. About 4 % are worn by day only (`night_off`: the
  day's activity but no sleep, daily_sleep or readiness) and 4 % at night only (`day_off`: the sleep
  documents but no daily_activity), with no heart rate while the ring is off.
- Sleep periods belong to the day the user wakes up (a period ending after 18:00 local counts for the next
  day). Most days have one main `long_sleep`; some nights are short (only a `sleep` period, no
  `long_sleep`) or split into two `long_sleep` halves; some days add an afternoon `sleep` nap, a
  `late_nap` the evening before (counted for this day) — naps last 15 minutes or more and are mostly
  asleep —, a `rest` period (a detection the user rejected) or
  a `deleted` period that can be longer than the main sleep. Scores are null on some days and
  `hrv.items` holds nulls.
- Late sync, on the data clock `now`: a sleep period, the day's `daily_sleep`, `daily_readiness`, workouts and
  sessions appear only once the user opens the app after the period ends (a per-user delay with per-day
  jitter; on some days not until the next day). `daily_activity` (04:00 to 04:00 local) appears once its day
  has closed, plus a background-sync delay. Heart rate is visible up to `now` minus a per-user lag.
- In progress: on some nights, from bedtime + 45 min until the finished night syncs, the main period is
  served with `bedtime_end: null` and null durations (reported of real Oura although the spec requires it).
- Revisions: on some days Oura recomputes after the fact. From `revised_at` (a per-user delay after the day
  first appeared) the same `id` is served with changed scores and more steps; documents carrying the
  unknown extra `meta` object then show `version: 2` and the new `updated_at`.
- Heart rate: awake samples about every 5 minutes at odd seconds (not on a grid), sleep periods' own
  5-minute series from their start, bursts every few seconds during workouts (source `workout`).
- More collections (each from dice of its own, so adding them changed none of the above): some days add a
  second, autodetected walk (`workout`) or a `nap` Moment over an afternoon nap (`session`); SpO2,
  cardiovascular age and the bedtime recommendation come with a synced night, stress with a worn day
  (revised with the day), resilience with both, VO2 max now and then; rings, rest mode and tags are in
  `account` (see `wellness` and `account`).
- Unknown extra fields: some documents carry `meta {updated_at, version}`, some heart-rate rows a
  `producer_timestamp`; heart-rate timestamps come as `+00:00` or `.000Z` (other forms are a reading of
  the API, `../readings.py`).

Documents are built lazily per (user, day, collection) and kept in bounded caches (callers must not mutate
them), so a year of every collection takes a fraction of a second and 30 days of heart rate milliseconds.

Modules: `seeds` (stable hashes), `users` (profiles, zones, personal info), `days` (a day's plan), `identity`
(document ids and `meta`), `daily`, `sleep`, `workouts`, `wellness` and `account` (the documents), `queries`
(documents by day or id as of `now`), `heartrate` (samples and rows).
"""

from oura_assets.simulator.data.days import DayPlan, Period, Span, plan
from oura_assets.simulator.data.heartrate import HeartRateDay, heart_rate, heart_rate_day, heart_rate_row
from oura_assets.simulator.data.identity import document_id
from oura_assets.simulator.data.queries import (
    UNDATED_COLLECTIONS,
    documents,
    documents_for_day,
    find_document,
)
from oura_assets.simulator.data.users import (
    ZONES,
    Document,
    UserProfile,
    local_iso,
    local_midnight,
    personal_info,
    profile,
)

__all__ = [
    "UNDATED_COLLECTIONS",
    "ZONES",
    "DayPlan",
    "Document",
    "HeartRateDay",
    "Period",
    "Span",
    "UserProfile",
    "document_id",
    "documents",
    "documents_for_day",
    "find_document",
    "heart_rate",
    "heart_rate_day",
    "heart_rate_row",
    "local_iso",
    "local_midnight",
    "personal_info",
    "plan",
    "profile",
]
