"""What the routes ask for: a collection's documents over days, or one document by id, as synced by `now`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

from oura_assets.simulator.data import account, wellness
from oura_assets.simulator.data.daily import daily_activity, daily_readiness, daily_sleep
from oura_assets.simulator.data.days import DayPlan, plan
from oura_assets.simulator.data.identity import day_of_id
from oura_assets.simulator.data.sleep import sleep_doc, sleep_final
from oura_assets.simulator.data.users import Document, profile
from oura_assets.simulator.data.workouts import session, session_spans, workout, workout_spans

UNDATED_COLLECTIONS = frozenset({"ring_configuration"})
"""Collections whose route takes no dates [spec]: every document, whatever the days asked for."""


def _is_revised(plan_: DayPlan, now: datetime) -> bool:
    return plan_.revised_at is not None and plan_.revised_at <= now


def _seen(at: datetime | None, now: datetime) -> bool:
    return at is not None and at <= now


def _account_documents(name: str, collection: str, day: date, now: datetime) -> list[Document] | None:
    """Documents the user enters or owns (tags, rest mode); None for a collection that is not one of them."""
    if collection == "rest_mode_period":
        period = account.rest_mode_period(name, day, now)
        return [] if period is None else [period]
    if collection == "enhanced_tag":
        return account.enhanced_tags(name, day, now)
    if collection == "tag":
        return account.tags(name, day, now)
    return None


def _wellness_documents(name: str, collection: str, plan_: DayPlan, now: datetime) -> list[Document]:
    day = plan_.day
    if collection == "daily_spo2":
        return [wellness.daily_spo2(name, day)] if _seen(wellness.night_visible_at(plan_), now) else []
    if collection == "daily_stress":
        seen = _seen(wellness.day_visible_at(plan_), now)
        return [wellness.daily_stress(name, day, _is_revised(plan_, now))] if seen else []
    if collection == "daily_resilience":
        return [wellness.daily_resilience(name, day)] if _seen(wellness.resilience_visible_at(plan_), now) else []
    if collection == "daily_cardiovascular_age":
        seen = _seen(wellness.night_visible_at(plan_), now)
        return [wellness.daily_cardiovascular_age(name, day)] if seen else []
    if collection == "vO2_max":
        return [wellness.vo2_max(name, day)] if _seen(wellness.vo2_max_visible_at(name, day), now) else []
    if collection == "sleep_time":
        return [wellness.sleep_time(name, day)] if _seen(wellness.night_visible_at(plan_), now) else []
    return []


def documents_for_day(name: str, collection: str, day: date, now: datetime) -> list[Document]:
    """The documents of `collection` whose `day` is `day`, as Oura would serve them at `now` (UTC)."""
    entered = _account_documents(name, collection, day, now)
    if entered is not None:
        return entered
    plan_ = plan(name, day)
    if not plan_.worn:
        return []
    revised = _is_revised(plan_, now)
    if collection == "daily_readiness":
        visible = plan_.daily_visible_at is not None and plan_.daily_visible_at <= now
        return [daily_readiness(name, day, revised)] if visible else []
    if collection == "daily_sleep":
        visible = plan_.daily_visible_at is not None and plan_.daily_visible_at <= now
        return [daily_sleep(name, day, revised)] if visible else []
    if collection == "daily_activity":
        visible = plan_.activity_visible_at is not None and plan_.activity_visible_at <= now
        return [daily_activity(name, day, revised)] if visible else []
    if collection == "sleep":
        out: list[Document] = []
        main = plan_.main_period
        for period in plan_.periods:
            if period.visible_at <= now:
                out.append(sleep_final(name, day, period.index, revised))
            elif plan_.in_progress and period == main and period.start + timedelta(minutes=45) <= now:
                out.append(sleep_doc(profile(name), plan_, period, False, now))
        return out
    if collection == "workout":
        return [workout(name, day, w.index) for w in workout_spans(name, day) if w.visible_at <= now]
    if collection == "session":
        return [session(name, day, s.index) for s in session_spans(name, day) if s.visible_at <= now]
    return _wellness_documents(name, collection, plan_, now)


def documents(name: str, collection: str, days: Iterable[date], now: datetime) -> list[Document]:
    if collection in UNDATED_COLLECTIONS:
        return account.ring_configurations_at(name, now)
    out: list[Document] = []
    for day in days:
        out.extend(documents_for_day(name, collection, day, now))
    return out


def find_document(name: str, collection: str, document_id_: str, now: datetime) -> Document | None:
    """The document with this id, if it exists and has synced by `now`."""
    if collection in UNDATED_COLLECTIONS:
        candidates = account.ring_configurations_at(name, now)
    else:
        day = day_of_id(profile(name), document_id_)
        if day is None:
            return None
        candidates = documents_for_day(name, collection, day, now)
    return next((doc for doc in candidates if doc["id"] == document_id_), None)
