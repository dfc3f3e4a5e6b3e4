"""Why a patient-day has the data it has: `complete`, or which of the reasons it is not (pure, no I/O).

A missing day means different things to whoever reads the table: a ring left on the charger (`not_worn`),
a phone that has not synced yet (`awaiting_sync`: sleep and readiness reach Oura's cloud only when the
patient opens the Oura app, so recent days fill in late), a broken connection (`reconnect_required`), an
expired Oura membership (`subscription_expired`) or a fetch that failed (`error`). This module tells them
apart from what is known of the day (`DayEvidence`: which documents Oura returned, the activity document's
`non_wear_time`, heart-rate coverage), the run's fetch errors and the connection's state. The rebuild and the
sync gather those and store the answer (`patient_graph.wearable_day_status`, one row per synced day,
complete days included so a count of days needs no calendar).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from oura_assets import domain
from oura_assets.normalize import main_sleep_period

NOT_WORN_SECONDS = 20 * 3600
"""`non_wear_time` (seconds of the 86,400 in Oura's activity day) from which the ring counts as not worn."""
AWAITING_SYNC_DAYS = 2
"""A day this many days before the run (or later) with missing data may still arrive: the phone syncs late."""
LITTLE_HEART_RATE = 36
"""Fewer heart-rate samples than this in a local day (3 h at 5-minute daytime sampling) count as no data."""

PATIENT_LEVEL_CODES = {
    "reconnect_required": domain.DAY_RECONNECT_REQUIRED,
    "subscription_expired": domain.DAY_SUBSCRIPTION_EXPIRED,
}
"""Sync error codes that stop every fetch for the patient, and the day status each means."""

# What a day is made of, by the Oura collection it comes from and the words a reason uses for it.
_PARTS = (
    ("daily_readiness", "readiness"),
    ("daily_sleep", "sleep score"),
    ("sleep", "main sleep period"),
    ("daily_activity", "activity"),
)
_WHY_AWAITING = "sleep and readiness reach Oura's cloud only when the patient opens the Oura app"


@dataclass(frozen=True)
class DayEvidence:
    """What the warehouse holds for one patient-day."""

    day: date
    collections: frozenset[str] = frozenset()
    """Document collections with a usable document for the day (`sleep`: a main sleep period)."""
    non_wear_seconds: int | None = None
    """The day's `daily_activity.non_wear_time`, when Oura sent one."""
    hr_samples: int = 0
    """Distinct heart-rate samples in the patient's local day."""


@dataclass(frozen=True)
class FetchError:
    """A sync error of the patient in the run: its code, the collection it hit (None: all) and message."""

    code: str
    collection: str | None = None
    message: str = ""


@dataclass(frozen=True)
class DayStatus:
    day: date
    status: str
    reason: str


def evidence(
    days: Iterable[date], documents: Mapping[str, Sequence[Mapping[str, Any]]], hr_samples: Mapping[date, int]
) -> list[DayEvidence]:
    """Each day's evidence from the patient's (screened) documents by collection and heart-rate counts."""
    by_day: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for collection, docs in documents.items():
        for doc in docs:
            by_day.setdefault(str(doc.get("day"))[:10], {}).setdefault(collection, []).append(doc)
    out = []
    for day in sorted(set(days)):
        found = by_day.get(day.isoformat(), {})
        present = {c for c in ("daily_readiness", "daily_sleep", "daily_activity") if found.get(c)}
        if main_sleep_period(found.get("sleep", [])) is not None:
            present.add("sleep")
        non_wear = None
        for activity in found.get("daily_activity", []):
            value = activity.get("non_wear_time")
            if isinstance(value, int | float) and not isinstance(value, bool):
                non_wear = int(value)
        out.append(DayEvidence(day, frozenset(present), non_wear, int(hr_samples.get(day, 0))))
    return out


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _error_text(error: FetchError) -> str:
    where = f" ({error.collection})" if error.collection else ""
    return f"{error.code}{where}" + (f": {error.message}" if error.message else "")


def derive_day_status(
    day: DayEvidence,
    *,
    today: date,
    errors: Sequence[FetchError] = (),
    connection_status: str | None = domain.ACTIVE,
    last_synced: date | None = None,
) -> DayStatus:
    """The day's status and reason. `today` is the run's (UTC) date; `errors` the patient's sync errors in
    the run; `last_synced` the date the patient's data last landed (before or in this run)."""
    missing = [words for collection, words in _PARTS if collection not in day.collections]
    missing_collections = {collection for collection, _ in _PARTS if collection not in day.collections}
    present = [words for collection, words in _PARTS if collection in day.collections]
    if day.hr_samples:
        present.append(f"{day.hr_samples} heart-rate samples")
    has_data = bool(day.collections) or day.hr_samples >= LITTLE_HEART_RATE
    held = f"; held: {_join(present)}" if present else ""
    if not missing:
        return DayStatus(day.day, domain.DAY_COMPLETE, f"complete: {_join(present)}")

    # A day already old when the patient's data last landed was fetched then: what it holds is final, and a
    # later broken connection says nothing about it.
    settled = last_synced is not None and day.day < last_synced - timedelta(days=AWAITING_SYNC_DAYS)
    patient_level = [e for e in errors if e.code in PATIENT_LEVEL_CODES]
    if patient_level and not settled:
        error = patient_level[0]
        status = PATIENT_LEVEL_CODES[error.code]
        return DayStatus(day.day, status, f"{_join(missing)} not fetched: {_error_text(error)}{held}")
    if connection_status in (domain.RECONNECT_REQUIRED, domain.DISCONNECTED) and not settled:
        why = (
            "the patient must reconnect Oura"
            if connection_status == domain.RECONNECT_REQUIRED
            else ("the patient disconnected Oura")
        )
        return DayStatus(day.day, domain.DAY_RECONNECT_REQUIRED, f"{_join(missing)} not fetched: {why}{held}")

    not_worn = day.non_wear_seconds is not None and day.non_wear_seconds >= NOT_WORN_SECONDS
    if not_worn and "sleep" not in day.collections:
        return DayStatus(
            day.day,
            domain.DAY_NOT_WORN,
            f"ring not worn: Oura recorded {day.non_wear_seconds / 3600:.1f} h without the ring "
            f"(non_wear_time) and no sleep{held}",
        )
    failed = [
        e
        for e in errors
        if e.code not in PATIENT_LEVEL_CODES and (e.collection is None or e.collection in missing_collections)
    ]
    if failed:
        return DayStatus(
            day.day, domain.DAY_ERROR, f"{_join(missing)} missing: {_error_text(failed[0])}{held}"
        )
    recent = day.day >= today - timedelta(days=AWAITING_SYNC_DAYS)
    if recent:
        what = f"{_join(missing)} not synced yet" if has_data else "nothing from Oura yet"
        return DayStatus(day.day, domain.DAY_AWAITING_SYNC, f"{what}: {_WHY_AWAITING}{held}")
    if has_data:
        return DayStatus(day.day, domain.DAY_PARTIAL, f"{_join(missing)} missing{held}")
    return DayStatus(
        day.day,
        domain.DAY_NOT_WORN,
        "ring not worn: Oura returned no documents for this past day"
        + (f" and only {day.hr_samples} heart-rate samples" if day.hr_samples else " and no heart rate"),
    )


def day_statuses(
    days: Iterable[DayEvidence],
    *,
    today: date,
    errors: Sequence[FetchError] = (),
    connection_status: str | None = domain.ACTIVE,
    last_synced: date | None = None,
) -> list[DayStatus]:
    """`derive_day_status` for each day, by day."""
    return [
        derive_day_status(
            day, today=today, errors=errors, connection_status=connection_status, last_synced=last_synced
        )
        for day in sorted(days, key=lambda d: d.day)
    ]
