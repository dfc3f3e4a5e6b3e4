"""The Oura request budget's shared row in PostgreSQL, for runs on many hosts.

Shard runs of one night (`shards.py`) may run on different machines (Kubernetes pods, several workers), and
Oura's limit is per application, not per host: a SQLite file per host would let N hosts send N times the
limit. With `OURA_ASSETS_RATE_BUDGET=postgres:<dsn>` every process of every host keeps the budget in one row
of one PostgreSQL table instead (`oura_rate_budget`, one row per Oura application, keyed by a hash of its
client id): GCRA's next-allowed time, the limit learned from Oura's headers and the pause a 429 asked for.

Each request's turn is one short transaction: `SELECT ... FOR UPDATE` of the row (so processes queue on the
row lock, never race), the booking step over pyrate-limiter's GCRA (`rate_budget.book_slot`), `UPDATE`,
`COMMIT`. The time it is judged by is the
server's `clock_timestamp()`, read in that same statement, so hosts whose clocks disagree still share one
timeline; a 429's pause is likewise set in server time.

Written by hand, and why: pyrate-limiter 4.5 does ship a `PostgresBucket`, but it is a log bucket (one row
per request admitted, counted over a sliding window, a table per bucket, a psycopg 3 pool) for its
log algorithms; it has no place for GCRA's single number, nor for the learned limit and the shared pause
that `RateBudget` keeps beside it, and pacing at an even rate (what keeps Oura's fixed windows from filling)
is GCRA's. So this is the host store (`rate_budget._SQLiteState`) again over psycopg2, the driver
dagster-postgres already brings, rather than a second one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
from pyrate_limiter import Rate

from oura_assets.oura.rate_budget import BudgetStore, book_slot
from oura_assets.postgres_dsn import describe, first_line

T = TypeVar("T")

TABLE = "oura_rate_budget"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    application TEXT PRIMARY KEY,
    tat_us BIGINT NOT NULL DEFAULT 0,
    learned_limit INTEGER,
    learned_window_s DOUBLE PRECISION,
    learned_at DOUBLE PRECISION,
    paused_until DOUBLE PRECISION NOT NULL DEFAULT 0
)
"""
# Concurrent `CREATE TABLE IF NOT EXISTS` can still fail on PostgreSQL's catalog (a unique violation on
# pg_type) when two processes start at once; an advisory lock makes the first one create it alone.
_CREATE_LOCK = 0x7A7EB0D6  # any fixed number: every process must take the same lock
_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


class RateBudgetUnavailable(RuntimeError):
    """The budget's database cannot be reached. Says which server (host, port, database), never the DSN,
    which may carry a password."""


class PostgresBudgetState(BudgetStore):
    """One application's budget row in PostgreSQL; one connection per process, used by one thread at a
    time, reconnected once when the server dropped it."""

    def __init__(self, dsn: str, *, application: str, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self._where = describe(dsn)
        self._application = application
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None

        def create(cur: Any) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            cur.execute(_SCHEMA)
            cur.execute(
                f"INSERT INTO {TABLE} (application) VALUES (%s) ON CONFLICT DO NOTHING",  # noqa: S608
                (application,),
            )

        self._transaction(create)

    def _connect(self) -> Any:
        try:
            conn = psycopg2.connect(
                self._dsn, connect_timeout=self._connect_timeout_s, application_name="oura-assets rate budget"
            )
        except psycopg2.Error as exc:
            raise RateBudgetUnavailable(
                f"the Oura rate budget's database at {self._where} cannot be reached: {first_line(exc)}"
            ) from None
        conn.autocommit = False
        return conn

    def _transaction(self, work: Callable[[Any], T]) -> T:
        """Run `work(cursor)` in one transaction; on a dropped connection, once more on a new one."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    with self._conn.cursor() as cur:
                        result = work(cur)
                    self._conn.commit()
                    return result
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise RateBudgetUnavailable(
                            f"the Oura rate budget's database at {self._where} failed: {first_line(exc)}"
                        ) from None
                except BaseException:
                    self._conn.rollback()
                    raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def server_now_ms(self) -> int:
        def now(cur: Any) -> int:
            cur.execute(f"SELECT {_NOW_MS}")
            return int(cur.fetchone()[0])

        return self._transaction(now)

    def row(self) -> tuple[int, int | None, float | None, float | None, float]:
        def read(cur: Any) -> tuple[int, int | None, float | None, float | None, float]:
            cur.execute(
                "SELECT tat_us, learned_limit, learned_window_s, learned_at, paused_until "  # noqa: S608
                f"FROM {TABLE} WHERE application = %s",
                (self._application,),
            )
            return cur.fetchone()

        return self._transaction(read)

    def _update(self, assignments: str, params: tuple[object, ...]) -> None:
        def update(cur: Any) -> None:
            cur.execute(
                f"UPDATE {TABLE} SET {assignments} WHERE application = %s",  # noqa: S608 (fixed SQL)
                (*params, self._application),
            )

        self._transaction(update)

    def learn(self, limit: int, window_s: float, at: float) -> None:
        self._update("learned_limit = %s, learned_window_s = %s, learned_at = %s", (limit, window_s, at))

    def confirm_learned(self, at: float) -> None:
        self._update("learned_at = %s", (at,))

    def pause(self, seconds: float) -> None:
        self._update(f"paused_until = greatest(paused_until, {_NOW_MS} / 1000.0 + %s)", (seconds,))

    def book(self, rates: list[Rate]) -> int:
        # The server's clock, read under the row lock, is the one every host agrees on.
        def step(cur: Any) -> int:
            cur.execute(
                f"SELECT tat_us, paused_until, {_NOW_MS} FROM {TABLE} "  # noqa: S608
                "WHERE application = %s FOR UPDATE",
                (self._application,),
            )
            tat_us, paused_until, server_now = cur.fetchone()
            tat_us, at = book_slot(rates, int(tat_us), int(server_now), paused_until)
            cur.execute(
                f"UPDATE {TABLE} SET tat_us = %s WHERE application = %s",  # noqa: S608
                (tat_us, self._application),
            )
            return at - int(server_now)

        return self._transaction(step)

    def paused_ms(self) -> int:
        def left(cur: Any) -> int:
            cur.execute(
                f"SELECT greatest(0, ceil(paused_until * 1000 - {_NOW_MS})) FROM {TABLE} "  # noqa: S608
                "WHERE application = %s",
                (self._application,),
            )
            return int(cur.fetchone()[0])

        return self._transaction(left)

    def close(self) -> None:
        with self._lock:
            self._drop()
