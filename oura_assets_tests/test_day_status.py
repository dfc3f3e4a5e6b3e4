"""Day status, the pure derivation: which of the seven statuses a patient-day gets, and why."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from oura_assets import domain
from oura_assets.day_status import (
    DayEvidence,
    FetchError,
    day_statuses,
    derive_day_status,
    evidence,
)

TODAY = date(2024, 6, 20)
OLD = TODAY - timedelta(days=10)
RECENT = TODAY - timedelta(days=1)
ALL = frozenset({"daily_readiness", "daily_sleep", "sleep", "daily_activity"})
ACTIVITY = frozenset({"daily_activity"})

CASES = [
    # (name, evidence, kwargs, status, words in the reason)
    ("everything present", DayEvidence(OLD, ALL, 600, 900), {}, domain.DAY_COMPLETE, "complete"),
    (
        "ring on the charger: activity says 22 h off, no sleep",
        DayEvidence(OLD, ACTIVITY, 22 * 3600, 10),
        {},
        domain.DAY_NOT_WORN,
        "22.0 h without the ring",
    ),
    (
        "ring on the charger even on a recent day",
        DayEvidence(RECENT, ACTIVITY, 23 * 3600),
        {},
        domain.DAY_NOT_WORN,
        "non_wear_time",
    ),
    (
        "a past day Oura returned nothing for",
        DayEvidence(OLD),
        {},
        domain.DAY_NOT_WORN,
        "no documents",
    ),
    (
        "a recent day with nothing yet: the phone has not synced",
        DayEvidence(RECENT),
        {},
        domain.DAY_AWAITING_SYNC,
        "opens the Oura app",
    ),
    (
        "today with activity only: sleep and readiness still to come",
        DayEvidence(TODAY, ACTIVITY, 3600, 200),
        {},
        domain.DAY_AWAITING_SYNC,
        "readiness, sleep score and main sleep period not synced yet",
    ),
    (
        "a past day with activity and heart rate but no sleep documents",
        DayEvidence(OLD, ACTIVITY, 3600, 200),
        {},
        domain.DAY_PARTIAL,
        "readiness, sleep score and main sleep period missing",
    ),
    (
        "a past day with heart rate only",
        DayEvidence(OLD, frozenset(), None, 400),
        {},
        domain.DAY_PARTIAL,
        "400 heart-rate samples",
    ),
    (
        "broken token: the sync failed with reconnect_required",
        DayEvidence(RECENT),
        {"errors": [FetchError("reconnect_required", None, "refresh token refused")]},
        domain.DAY_RECONNECT_REQUIRED,
        "refresh token refused",
    ),
    (
        "broken token on an old day never synced before",
        DayEvidence(OLD),
        {"errors": [FetchError("reconnect_required")], "last_synced": None},
        domain.DAY_RECONNECT_REQUIRED,
        "not fetched",
    ),
    (
        "broken token later: a day settled when data last landed keeps its own status",
        DayEvidence(OLD),
        {"errors": [FetchError("reconnect_required")], "last_synced": OLD + timedelta(days=5)},
        domain.DAY_NOT_WORN,
        "no documents",
    ),
    (
        "connection flagged reconnect_required, no run error (a rebuild-only run)",
        DayEvidence(RECENT, ACTIVITY, 3600),
        {"connection_status": domain.RECONNECT_REQUIRED},
        domain.DAY_RECONNECT_REQUIRED,
        "must reconnect",
    ),
    (
        "membership expired: every collection answered 403",
        DayEvidence(OLD),
        {"errors": [FetchError("subscription_expired", None, "403")]},
        domain.DAY_SUBSCRIPTION_EXPIRED,
        "subscription_expired",
    ),
    (
        "Oura down for the sleep collection",
        DayEvidence(OLD, frozenset({"daily_readiness", "daily_activity"}), 0),
        {"errors": [FetchError("oura_unavailable", "daily_sleep", "503 after 5 tries")]},
        domain.DAY_ERROR,
        "oura_unavailable (daily_sleep)",
    ),
    (
        "an error on a collection the day does not miss does not matter",
        DayEvidence(OLD, ALL),
        {"errors": [FetchError("oura_unavailable", "heartrate")]},
        domain.DAY_COMPLETE,
        "complete",
    ),
]


@pytest.mark.parametrize(("name", "day", "kwargs", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_derive_day_status(name, day, kwargs, status, words):
    result = derive_day_status(day, today=TODAY, **kwargs)
    assert result.day == day.day
    assert result.status == status, result.reason
    assert words in result.reason
    assert result.status in domain.DAY_STATUSES


def test_every_status_but_complete_is_reachable_and_explained():
    reached = {derive_day_status(day, today=TODAY, **kwargs).status for _, day, kwargs, _, _ in CASES}
    assert reached == set(domain.DAY_STATUSES)


def test_evidence_reads_documents_main_period_non_wear_and_heart_rate():
    day, other = date(2024, 6, 10), date(2024, 6, 11)
    documents = {
        "daily_readiness": [{"id": "r", "day": "2024-06-10"}],
        "daily_sleep": [],
        "sleep": [
            {"id": "rest", "day": "2024-06-10", "type": "rest", "total_sleep_duration": 900},
            {"id": "night", "day": "2024-06-11", "type": "long_sleep", "total_sleep_duration": 25000},
        ],
        "daily_activity": [{"id": "a", "day": "2024-06-11", "non_wear_time": 80000}],
    }
    found = evidence([other, day], documents, {day: 12})
    assert found == [
        DayEvidence(day, frozenset({"daily_readiness"}), None, 12),
        DayEvidence(other, frozenset({"sleep", "daily_activity"}), 80000, 0),
    ]


def test_day_statuses_are_in_day_order_and_one_per_day():
    days = [DayEvidence(TODAY - timedelta(days=n)) for n in range(5)]
    statuses = day_statuses(days, today=TODAY)
    assert [s.day for s in statuses] == sorted(d.day for d in days)
    assert [s.status for s in statuses] == [domain.DAY_NOT_WORN, domain.DAY_NOT_WORN] + [
        domain.DAY_AWAITING_SYNC
    ] * 3


def test_unknown_day_status_is_refused():
    with pytest.raises(ValueError, match="unknown day status"):
        domain.check_day_status("missing")
