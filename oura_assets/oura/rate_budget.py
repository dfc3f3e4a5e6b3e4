"""One request budget per Oura application, shared by every patient, run and process on this host.

Oura limits requests per application (5,000 per 5 minutes is the figure given) and per access token [spec].
The nightly run, a backfill, the sensors' API-sync runs all spend the same application budget, so pacing
each run on its own would let them add up past the limit and learn it through 429s, over and over. Here
the budget lives in one small SQLite file per application under the lock directory
(`data/locks/oura-rate-<sha256(client id)>.sqlite`), and every request of every process takes its turn:

- Pacing is pyrate-limiter's GCRA (a leaky bucket kept as one timestamp): requests leave evenly spaced at
  `share` of the limit, with a burst of a few, so Oura's fixed windows never fill even when arrival times
  jitter. Each request *books* its slot: one step of the GCRA at the earliest time it allows moves the
  shared timestamp on and tells the asker how long to sleep, so turns go in the order they were asked for.
- The limit is learned: `X-RateLimit-Limit` / `X-RateLimit-Window` on any answer (Oura sends them on a 429
  [spec]; on other answers too, if it ever does) replace the configured one for every process at once, and
  a 429's `Retry-After` (else `X-RateLimit-Reset`) pauses every process until then. 429s are expected only
  while the limit is still being learned.
- Fair between runs: a process queues its own threads first-come first-served and sends one of them at a
  time to the shared bucket, so each process holds at most one booked slot and the bookings of N processes
  interleave one by one, however many threads each has (a year's backfill does not starve a new patient's
  initial sync running in another process). Fair between a run's patients: each patient's requests are
  sequential, so the first-come queue takes them in turns.
- Paced from the first request: the configured limit (default Oura's documented 5,000 per 5 minutes) is
  in force until Oura announces another, so production never goes past it, even before a 429 taught it.
  The simulator's default application limit is the same, so tests and the demo pace for real (15 req/s
  with a burst of 15 per fresh budget file); measured, `test_pipeline.py` spends 17 s summed over its 480
  requests' waits (threads wait in parallel), not measurable in its wall time (204 s vs main's 267 s on a
  loaded 2-core host). Not pacing until a 429 would be faster only by going over the limit first.
- Concurrency follows the cycle seen: `suggested_workers` is how many patients must be in flight to keep the
  paced rate busy (Little's law over each request's cycle: Oura's latency plus our own work until the
  patient's next request; `concurrency.InFlightTarget`), instead of a fixed count.

Where the budget lives: on one host, the SQLite file above. Runs on several hosts (shards of a night, see
`shards.py`) share one budget in PostgreSQL instead, `OURA_ASSETS_RATE_BUDGET=postgres:<dsn>`: the same row,
in `rate_budget_postgres.py`. Either store holds the same four things and `RateBudget` does not know which
one it talks to; fairness between shards is fairness between processes (one turn per process, below).

Written by hand, and why: pyrate-limiter 4.5 ships GCRA's state only in memory, in a `multiprocessing`
Manager (which needs a common parent process; our runs are independent processes) or in Redis, so
`_SQLiteState` keeps it in SQLite (one row, `BEGIN IMMEDIATE`), next to the learned limit and the pause that
every process must see. Its `Limiter` is not used: its blocking loop asks, sleeps the wait it was told and
asks again, so the turn goes to whoever asks first *after* the slot opens. Processes that all wait for the
same slot race for it, and one that wakes late (a busy CPU) loses its turn again and again: measured, with
one core kept busy three processes' shares went from a third each to 0.56 for one. Booking (`book_slot`, a
few lines over pyrate-limiter's own `GCRA.step`) gives the slot to whoever asked first. The in-process
first-come queue (`_TurnQueue`) and the worker estimate are a few lines each; neither pyrate-limiter,
`limits` nor `aiolimiter` (asyncio only; our client is sync httpx) offers them.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrate_limiter import GCRA, Rate, WallClock

from oura_assets.oura.concurrency import InFlightTarget

if TYPE_CHECKING:
    from oura_assets.config import Settings

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 5000
DEFAULT_WINDOW_S = 300.0
# A learned limit is trusted this long; then the configured one applies until Oura says otherwise again
# (a raised limit is picked up without anyone editing config).
LEARNED_TTL_S = 86_400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tat_us INTEGER NOT NULL DEFAULT 0,
    learned_limit INTEGER,
    learned_window_s REAL,
    learned_at REAL,
    paused_until REAL NOT NULL DEFAULT 0
)
"""


def application_key(client_id: str) -> str:
    """How a budget names its Oura application: a hash of the client id (not a secret, but not needed)."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:16]


def budget_path(lock_dir: Path, client_id: str) -> Path:
    """The budget file of one Oura application; its name carries no secret (a hash of the client id)."""
    return Path(lock_dir) / f"oura-rate-{application_key(client_id)}.sqlite"


@dataclass(frozen=True)
class RateLimitHeaders:
    """What an answer said about the application's limit [spec]; any field may be missing."""

    limit: int | None = None
    window_s: float | None = None
    retry_after_s: float | None = None
    tier: str | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str], *, now: float) -> RateLimitHeaders:
        def number(name: str) -> float | None:
            try:
                value = float(headers.get(name, "").strip())
            except ValueError:
                return None
            return value if math.isfinite(value) and value >= 0 else None

        limit, window = number("X-RateLimit-Limit"), number("X-RateLimit-Window")
        retry_after = number("Retry-After")
        if retry_after is None and headers.get("Retry-After"):
            try:
                when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
                retry_after = max(0.0, when - now)
            except (TypeError, ValueError):
                retry_after = None
        reset = number("X-RateLimit-Reset")
        if retry_after is None and reset is not None:
            retry_after = max(0.0, reset - now)
        return cls(
            limit=int(limit) if limit else None,
            window_s=window or None,
            retry_after_s=retry_after,
            tier=(headers.get("X-RateLimit-Tier") or "").strip().lower() or None,
        )


_GCRA = GCRA()  # stateless: one instance serves every budget and thread


def book_slot(rates: list[Rate], tat_us: int, now_ms: int, paused_until_s: float) -> tuple[int, int]:
    """(the bucket's next timestamp, the epoch ms the booked request may go at): the earliest time at or after
    `now_ms` and any pause that pyrate-limiter's GCRA admits one more request, admitted there."""
    at = max(now_ms, math.ceil(paused_until_s * 1000))
    while True:
        state, decision = _GCRA.step(rates, (tat_us,), at, 1)
        if decision.allowed:
            return int(state[0]), at
        # GCRA's wait is exact (rounded up to a millisecond), so the next step is admitted.
        at += max(1, decision.retry_after_ms or 1)


class BudgetStore(ABC):
    """Where a budget's shared row lives: GCRA's one number, the limit learned from Oura, and the pause a 429
    asked for. `book` and `paused_ms` read the store's own clock."""

    @abstractmethod
    def book(self, rates: list[Rate]) -> int:
        """Book the next slot for one request (`book_slot`, atomically on the shared row): milliseconds the
        asker must wait before sending it."""

    @abstractmethod
    def paused_ms(self) -> int:
        """Milliseconds left of a 429's pause (0 when none holds)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the store's connection."""

    @abstractmethod
    def row(self) -> tuple[int, int | None, float | None, float | None, float]:
        """(tat_us, learned_limit, learned_window_s, learned_at, paused_until)."""

    @abstractmethod
    def learn(self, limit: int, window_s: float, at: float) -> None:
        """Record the limit Oura announced, for every process."""

    @abstractmethod
    def confirm_learned(self, at: float) -> None:
        """Oura repeated the learned limit: it is fresh again."""

    @abstractmethod
    def pause(self, seconds: float) -> None:
        """Nobody sends for `seconds` from now (by the store's clock), unless a longer pause holds already."""


class _SQLiteState(BudgetStore):
    """GCRA's one number in a SQLite row every process on the host reads and writes atomically.

    The row also holds the pause a 429 asked for: no slot is booked before it ends.
    """

    default_clock = WallClock()  # compared across processes: epoch milliseconds, not a monotonic clock

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # No fsync per commit (WAL keeps the file consistent): every request commits here, one process
            # thread at a time, and an fsync per turn cost 2 ms of wall time per request on an idle disk
            # (far more on a busy one). A power loss may forget the last few turns, which only lets the
            # next second's requests go a little early.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO budget (id) VALUES (1)")

    def row(self) -> tuple[int, int | None, float | None, float | None, float]:
        with self._lock:
            return self._conn.execute(
                "SELECT tat_us, learned_limit, learned_window_s, learned_at, paused_until FROM budget"
            ).fetchone()

    def _update(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._conn.execute(sql, params)

    def learn(self, limit: int, window_s: float, at: float) -> None:
        self._update(
            "UPDATE budget SET learned_limit = ?, learned_window_s = ?, learned_at = ?", (limit, window_s, at)
        )

    def confirm_learned(self, at: float) -> None:
        self._update("UPDATE budget SET learned_at = ?", (at,))

    def pause(self, seconds: float) -> None:
        until = self.default_clock.now() / 1000 + seconds
        self._update("UPDATE budget SET paused_until = max(paused_until, ?)", (until,))

    def book(self, rates: list[Rate]) -> int:
        now = self.default_clock.now()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                tat_us, paused_until = self._conn.execute(
                    "SELECT tat_us, paused_until FROM budget"
                ).fetchone()
                tat_us, at = book_slot(rates, tat_us, now, paused_until)
                self._conn.execute("UPDATE budget SET tat_us = ?", (tat_us,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return at - now

    def paused_ms(self) -> int:
        paused_until = self.row()[4]
        return max(0, math.ceil(paused_until * 1000 - self.default_clock.now()))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _TurnQueue:
    """First come, first served among this process's threads; one at a time goes to the shared bucket."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class RateBudget:
    """The request budget of one Oura application, shared by every process using the same store (see the
    module docstring): the SQLite file at `path`, or `store` (PostgreSQL, for many hosts).

    `limit` per `window_s` is what to assume until Oura's headers say otherwise; requests are paced at
    `share` of the limit in force. `cycle_clock` times request cycles (injectable for tests).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        store: BudgetStore | None = None,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        share: float = 0.9,
        clock: Callable[[], float] = time.time,
        cycle_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or not 0 < share <= 1:
            raise ValueError(
                f"rate budget needs limit >= 1, window_s > 0, 0 < share <= 1: {limit}, {window_s}"
            )
        if (path is None) == (store is None):
            raise ValueError("a rate budget needs either a SQLite path or a store, not both")
        self.path = Path(path) if path is not None else None
        self._configured = (limit, window_s)
        self._share = share
        self._clock = clock
        self._state: BudgetStore = store if store is not None else _SQLiteState(Path(path))
        self._paced_for = (limit, window_s)
        self._rates = [self._rate(limit, window_s)]
        self._turns = _TurnQueue()
        self._cycle_clock = cycle_clock
        self._in_flight = InFlightTarget()
        self._thread = threading.local()  # when this thread's last request went
        self.requests = 0
        self.rate_limited = 0

    @classmethod
    def for_application(
        cls,
        lock_dir: Path,
        client_id: str,
        *,
        postgres: str | None = None,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        share: float = 0.9,
    ) -> RateBudget:
        """The application's budget: in the PostgreSQL database `postgres` (a libpq DSN or URL) when given,
        shared by every host that names it, else in the host's SQLite file under `lock_dir`."""
        if postgres is not None:
            from oura_assets.oura.rate_budget_postgres import PostgresBudgetState

            store = PostgresBudgetState(postgres, application=application_key(client_id))
            return cls(store=store, limit=limit, window_s=window_s, share=share)
        return cls(budget_path(lock_dir, client_id), limit=limit, window_s=window_s, share=share)

    @classmethod
    def from_settings(cls, settings: Settings, **pacing: Any) -> RateBudget:
        """The configured application's budget where `OURA_ASSETS_RATE_BUDGET` puts it (`pacing`: `limit`,
        `window_s`, `share`)."""
        return cls.for_application(
            settings.lock_dir, settings.client_id or "", postgres=settings.rate_budget, **pacing
        )

    def _rate(self, limit: int, window_s: float) -> Rate:
        paced = max(1, math.floor(limit * self._share))
        # A burst of up to half the headroom (and at most a second's worth): in any window of Oura's,
        # burst + paced stays under the limit.
        burst = max(1, min(math.floor((limit - paced) / 2), math.ceil(paced / window_s)))
        return Rate(paced, max(1, round(window_s * 1000)), burst=burst)

    def limit(self) -> tuple[int, float]:
        """The limit in force: learned from Oura within `LEARNED_TTL_S`, else the configured one."""
        _, learned_limit, learned_window, learned_at, _ = self._state.row()
        if learned_limit and learned_window and learned_at and self._clock() - learned_at < LEARNED_TTL_S:
            return int(learned_limit), float(learned_window)
        return self._configured

    @property
    def rate_per_s(self) -> float:
        """Requests per second this budget sends at, over all processes."""
        limit, window_s = self.limit()
        return max(1, math.floor(limit * self._share)) / window_s

    def acquire(self) -> None:
        """Block until this request may go: its turn in this process, then room in the shared budget.

        The time since this thread's previous request went is one request cycle (`InFlightTarget`).
        """
        went_at = getattr(self._thread, "went_at", None)
        if went_at is not None:
            self._in_flight.observe(self._cycle_clock() - went_at)
        with self._turns:
            limit = self.limit()
            if limit != self._paced_for:
                self._rates = [self._rate(*limit)]
                self._paced_for = limit
            while True:
                wait_ms = self._state.book(self._rates)
                if wait_ms <= 0:
                    break
                time.sleep(wait_ms / 1000)
                # A 429 that came while this request slept for its slot pauses it too: sit the pause out
                # and book again.
                paused = self._state.paused_ms()
                if paused <= 0:
                    break
                time.sleep(paused / 1000)
        self._thread.went_at = self._cycle_clock()
        self.requests += 1

    def observe(self, status: int, headers: Mapping[str, str], seconds: float) -> None:
        """Learn from one answer: any limit it announced, and a 429's pause.

        `seconds` (the answer's latency) is part of the client's protocol but not needed here: the request
        cycle that sizes concurrency is timed between a thread's requests (`acquire`), latency included.
        """
        now = self._clock()
        said = RateLimitHeaders.parse(headers, now=now)
        application = said.tier in (None, "application")
        if application and said.limit and said.window_s and (said.limit, said.window_s) != self.limit():
            log.info(
                "Oura announced %d requests per %g s for this application; pacing to it",
                said.limit,
                said.window_s,
            )
            self._state.learn(said.limit, said.window_s, now)
        elif application and said.limit and said.window_s:
            self._state.confirm_learned(now)
        if status == 429:
            # The wait before the retry is Oura's pause, not part of a request cycle.
            self._thread.went_at = None
            self.rate_limited += 1
            if application and said.retry_after_s is not None:
                # Every process waits until Oura's window resets, not only the request that was refused.
                self._state.pause(said.retry_after_s)

    def suggested_workers(self, cap: int) -> int:
        """Patients to keep in flight so the paced rate stays busy: rate x cycle x headroom, in [1, cap]."""
        return self._in_flight.target(self.rate_per_s, cap)

    def close(self) -> None:
        self._state.close()

    def __enter__(self) -> RateBudget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
