"""One user's day (`plan(name, day)`): worn or not, its sleep periods, workouts, sessions, scores, and when
each reaches the cloud or gets revised. The documents of every collection are rendered from this plan."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache

from oura_assets.simulator.data.seeds import clamp, seeded_rng
from oura_assets.simulator.data.users import local_instant, profile

WORKOUT_ACTIVITIES = ("walking", "running", "cycling", "strength_training", "yoga", "hiking", "swimming")


@dataclass(frozen=True)
class Period:
    """One detected sleep period: its type and its bounds as UTC instants."""

    index: int
    kind: str
    start: datetime
    end: datetime
    visible_at: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


@dataclass(frozen=True)
class Span:
    """A workout or session: what, when (UTC), and when it reaches the cloud."""

    index: int
    kind: str
    start: datetime
    end: datetime
    visible_at: datetime


@dataclass(frozen=True)
class DayPlan:
    """One user's day: whether the ring was worn, its periods, scores and when things appear or change."""

    day: date
    worn: bool
    periods: tuple[Period, ...] = ()
    workouts: tuple[Span, ...] = ()
    sessions: tuple[Span, ...] = ()
    readiness_score: int | None = None
    sleep_score: int | None = None
    activity_score: int | None = None
    daily_visible_at: datetime | None = None
    activity_visible_at: datetime | None = None
    revised_at: datetime | None = None
    revision_delta: int = 0
    in_progress: bool = False
    # Ring off overnight (activity but no sleep: no periods, no daily_sleep, no readiness) or off during the
    # day (sleep but no daily_activity document).
    night_off: bool = False
    day_off: bool = False

    @property
    def main_period(self) -> Period | None:
        candidates = [p for p in self.periods if p.kind == "long_sleep"] or [
            p for p in self.periods if p.kind == "sleep"
        ]
        return max(candidates, key=lambda p: p.seconds) if candidates else None


@lru_cache(maxsize=65536)
def plan(name: str, day: date) -> DayPlan:
    user = profile(name)
    rng = seeded_rng("day", name, day.isoformat())
    if rng.random() < user.not_worn_rate:
        return DayPlan(day=day, worn=False)
    zone = user.zone
    delay = user.app_delay_h * rng.uniform(0.5, 1.5) + (24.0 if rng.random() < 0.08 else 0.0)

    def shown(end: datetime) -> datetime:
        return end + timedelta(hours=delay)

    periods: list[Period] = []
    previous = day - timedelta(days=1)
    bedtime = user.bedtime_h + rng.uniform(-0.9, 0.9)
    start = local_instant(zone, previous, bedtime)
    night = rng.random()
    if night < 0.03:
        # A short night: only a `sleep` period, no `long_sleep` for the day.
        end = start + timedelta(hours=rng.uniform(1.5, 2.9))
        periods.append(Period(0, "sleep", start, end, shown(end)))
    elif night < 0.05:
        # A split night: two `long_sleep` halves.
        first_end = start + timedelta(hours=rng.uniform(3.2, 4.0))
        second_start = first_end + timedelta(minutes=rng.randint(45, 100))
        second_end = second_start + timedelta(hours=rng.uniform(3.1, 4.5))
        periods.append(Period(0, "long_sleep", start, first_end, shown(second_end)))
        periods.append(Period(1, "long_sleep", second_start, second_end, shown(second_end)))
    else:
        end = start + timedelta(hours=max(3.2, user.sleep_h + rng.uniform(-1.3, 1.3)))
        periods.append(Period(0, "long_sleep", start, end, shown(end)))
    main_end = periods[-1].end
    main_seconds = max(p.seconds for p in periods)
    extra = rng.random()
    if extra < 0.12:
        nap_start = local_instant(zone, day, rng.uniform(12.5, 16.0))
        # Oura detects naps of 15 minutes or more.
        nap_end = nap_start + timedelta(minutes=rng.randint(15, 90))
        periods.append(Period(len(periods), "sleep", nap_start, nap_end, shown(nap_end)))
    elif extra < 0.18:
        nap_start = local_instant(zone, previous, rng.uniform(18.2, 20.0))
        nap_end = nap_start + timedelta(minutes=rng.randint(15, 60))
        periods.insert(0, Period(0, "late_nap", nap_start, nap_end, shown(nap_end)))
    elif extra < 0.24:
        rest_start = local_instant(zone, day, rng.uniform(10.0, 16.0))
        rest_end = rest_start + timedelta(minutes=rng.randint(15, 70))
        periods.append(Period(len(periods), "rest", rest_start, rest_end, shown(rest_end)))
    elif extra < 0.28:
        # A deleted detection longer than the night's main sleep, still ending before the 18:00 day change.
        deleted_start = main_end + timedelta(minutes=rng.randint(20, 50))
        latest_end = local_instant(zone, day, 17.9)
        deleted_end = min(
            deleted_start + timedelta(seconds=main_seconds + rng.randint(1800, 7200)), latest_end
        )
        periods.append(Period(len(periods), "deleted", deleted_start, deleted_end, shown(deleted_end)))
    periods = [
        Period(i, p.kind, p.start, p.end, p.visible_at)
        for i, p in enumerate(sorted(periods, key=lambda p: p.start))
    ]
    daily_visible = shown(main_end)

    workouts: list[Span] = []
    if rng.random() < 0.35:
        w_start = local_instant(zone, day, rng.uniform(7.0, 19.0))
        w_end = w_start + timedelta(minutes=rng.randint(25, 90))
        workouts.append(Span(0, rng.choice(WORKOUT_ACTIVITIES), w_start, w_end, shown(w_end)))
    sessions: list[Span] = []
    if rng.random() < 0.15:
        s_start = local_instant(zone, day, rng.uniform(8.0, 21.0))
        s_end = s_start + timedelta(minutes=rng.randint(5, 20))
        sessions.append(
            Span(
                0, rng.choice(("breathing", "meditation", "relaxation", "rest")), s_start, s_end, shown(s_end)
            )
        )

    def score(mean: float, spread: float) -> int | None:
        return None if rng.random() < user.null_score_rate else clamp(rng.gauss(mean, spread), 20, 100)

    activity_visible = local_instant(zone, day + timedelta(days=1), 4.0) + timedelta(
        hours=user.activity_delay_h * rng.uniform(0.5, 1.5)
    )
    revised = rng.random() < user.revision_rate
    worn = DayPlan(
        day=day,
        worn=True,
        periods=tuple(periods),
        workouts=tuple(workouts),
        sessions=tuple(sessions),
        readiness_score=score(76, 9),
        sleep_score=score(74, 10),
        activity_score=score(78, 11),
        daily_visible_at=daily_visible,
        activity_visible_at=activity_visible,
        revised_at=(daily_visible + timedelta(hours=user.revision_delay_h)) if revised else None,
        revision_delta=rng.choice((-4, -3, -2, 2, 3, 5)) if revised else 0,
        in_progress=rng.random() < user.in_progress_rate,
    )
    # Drawn apart from the day's own dice, so adding these left every other value of the day as it was.
    partial = seeded_rng("day-partial", name, day.isoformat()).random()
    if partial < 0.04:
        # Off overnight: the day's activity (and workouts) but no sleep, so no daily_sleep and no readiness.
        return replace(
            worn,
            periods=(),
            readiness_score=None,
            sleep_score=None,
            daily_visible_at=None,
            revised_at=None,
            revision_delta=0,
            in_progress=False,
            night_off=True,
        )
    if partial < 0.08:
        # Worn only at night: the sleep documents but no daily_activity (too little wear to compute one).
        return replace(worn, workouts=(), sessions=(), activity_score=None, activity_visible_at=None, day_off=True)
    return worn
