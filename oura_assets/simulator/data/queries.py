"""What the routes ask for: a collection's documents over days, or one document by id, as synced by `now`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

from oura_assets.simulator.data.daily import daily_activity, daily_readiness, daily_sleep
from oura_assets.simulator.data.days import DayPlan, plan
from oura_assets.simulator.data.identity import day_of_id
from oura_assets.simulator.data.sleep import sleep_doc, sleep_final
from oura_assets.simulator.data.users import Document, profile
from oura_assets.simulator.data.workouts import session, workout


def _is_revised(plan_: DayPlan, now: datetime) -> bool:
    return plan_.revised_at is not None and plan_.revised_at <= now


def documents_for_day(name: str, collection: str, day: date, now: datetime) -> list[Document]:
    """The documents of `collection` whose `day` is `day`, as Oura would serve them at `now` (UTC)."""
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
        return [workout(name, day, w.index) for w in plan_.workouts if w.visible_at <= now]
    if collection == "session":
        return [session(name, day, s.index) for s in plan_.sessions if s.visible_at <= now]
    return []


def documents(name: str, collection: str, days: Iterable[date], now: datetime) -> list[Document]:
    out: list[Document] = []
    for day in days:
        out.extend(documents_for_day(name, collection, day, now))
    return out


def find_document(name: str, collection: str, document_id_: str, now: datetime) -> Document | None:
    """The document with this id, if it exists and has synced by `now`."""
    day = day_of_id(profile(name), document_id_)
    if day is None:
        return None
    for doc in documents_for_day(name, collection, day, now):
        if doc["id"] == document_id_:
            return doc
    return None
