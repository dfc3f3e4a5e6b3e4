"""Refresh locks and the token journal in PostgreSQL, for processes on several hosts (coordination.py).

With `OURA_ASSETS_COORDINATION=postgres:<dsn>` (config.py) every process of every host that names the
database shares:

- the per-patient refresh lock, and the lock a connection callback holds on its grant entry: session-level
  advisory locks (`pg_advisory_lock`), keyed by 64 bits of a SHA-256 of the lock's name (itself a hash of
  the patient id, or a grant's random id), so no patient id reaches the server or its logs. Each held lock
  has a connection of its own; the server lets go when the holder's session ends, so a process killed -9
  (or a pod deleted) cannot leave a patient locked, and a grant whose callback died is seen as unheld.
  A wait is bounded by `lock_timeout`, the server's own timer; no polling.
- the token journal: one row per entry in `oura_token_journal` (name, Fernet ciphertext, when written).
  Each write is one autocommitted statement on a session with `synchronous_commit = on` (whatever the
  database's default), so when `put` returns the row is flushed to the server's WAL: committed = durable,
  as the file journal's fsync is, and a pair journaled by a pod survives the pod.

Over psycopg2, the driver dagster-postgres brings and the shared rate budget uses
(oura/rate_budget_postgres.py). Connections come from a small per-process pool (coordination.from_settings
shares one `PostgresCoordination` per database and process), autocommit, reopened when the server dropped
them. Errors name the server (host, port, database), never the DSN, which may carry a password.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors

from oura_assets.coordination import CoordinationUnavailable, Lock
from oura_assets.postgres_dsn import describe, first_line

T = TypeVar("T")

TABLE = "oura_token_journal"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
)
"""
# Concurrent `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL's catalog when two processes start at once;
# the first one creates the table alone under this lock (a fixed number, not the rate budget's).
_CREATE_LOCK = 0x7A7EB0D7
_DROPPED = (psycopg2.OperationalError, psycopg2.InterfaceError)
# Idle connections a process keeps for the next lock or journal statement; more are opened while many
# patients are refreshed at once, and closed again when they come back.
_KEEP_IDLE = 4


def lock_key(name: str) -> int:
    """The advisory lock's 64-bit key for lock `name`: one-way, so the server sees no name (nor patient)."""
    digest = hashlib.sha256(f"oura-assets coordination:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Pool:
    """Autocommit connections to one database, for one process; thread-safe."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: int = 10,
        role: str = "the token coordination database",
        application: str = "oura-assets coordination",
    ) -> None:
        self._dsn = dsn
        self.role = role  # how errors name the database
        self._application = application  # how the server's pg_stat_activity names our sessions
        self.where = describe(dsn)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        try:
            conn = psycopg2.connect(
                self._dsn,
                connect_timeout=self._connect_timeout_s,
                application_name=self._application,
                # A waiter notices a server that went away, and the server a holder that did.
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
            conn.autocommit = True
            with conn.cursor() as cur:
                # Journal writes are durable when they return, whatever the database's default says.
                cur.execute("SET synchronous_commit = on")
        except psycopg2.Error as exc:
            raise CoordinationUnavailable(
                f"{self.role} at {self.where} cannot be reached: {first_line(exc)}"
            ) from None
        return conn

    def give_back(self, conn: Any) -> None:
        with self._lock:
            if not conn.closed and len(self._idle) < _KEEP_IDLE:
                self._idle.append(conn)
                return
        self.discard(conn)

    @staticmethod
    def discard(conn: Any) -> None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()

    def run(self, work: Callable[[Any], T]) -> T:
        """`work(cursor)` on a pooled connection; once more on a new one when the server dropped it."""
        for attempt in (1, 2):
            conn = self.take()
            try:
                with conn.cursor() as cur:
                    result = work(cur)
            except _DROPPED as exc:
                self.discard(conn)
                if attempt == 2:
                    raise CoordinationUnavailable(
                        f"{self.role} at {self.where} failed: {first_line(exc)}"
                    ) from None
                continue
            except psycopg2.Error as exc:
                self.give_back(conn)
                raise CoordinationUnavailable(
                    f"{self.role} at {self.where} refused a statement: {type(exc).__name__}"
                ) from None
            self.give_back(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)


class AdvisoryLock:
    """A session-level advisory lock, on a connection of its own while held."""

    def __init__(self, pool: _Pool, name: str) -> None:
        self._pool = pool
        self._key = lock_key(name)
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"AdvisoryLock(key={self._key})"

    def acquire(self, timeout_s: float | None) -> bool:
        if self._conn is not None:
            raise RuntimeError("this lock is already held by this holder")
        for attempt in (1, 2):
            conn = self._pool.take()
            try:
                got = self._lock_on(conn, timeout_s)
            except psycopg2.Error as exc:
                self._pool.discard(conn)  # a lock taken on it (if any) goes with the session
                # An idle pooled session the server dropped meanwhile: once more on a new one (nothing was
                # held on the dead session, so nothing can be held twice).
                if attempt == 1 and isinstance(exc, _DROPPED):
                    continue
                raise CoordinationUnavailable(
                    f"{self._pool.role} at {self._pool.where} failed while locking: {first_line(exc)}"
                ) from None
            if not got:
                self._pool.give_back(conn)
                return False
            self._conn = conn
            return True
        raise AssertionError("unreachable")

    def _lock_on(self, conn: Any, timeout_s: float | None) -> bool:
        with conn.cursor() as cur:
            if timeout_s is not None and timeout_s <= 0:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                return bool(cur.fetchone()[0])
            # The server's own timer bounds the wait; lock_timeout 0 is "as long as it takes".
            wait_ms = 0 if timeout_s is None else max(1, round(timeout_s * 1000))
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{wait_ms}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (self._key,))
                got = True
            except psycopg2.errors.LockNotAvailable:
                got = False
            cur.execute("SELECT set_config('lock_timeout', '0', false)")
            return got

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                released = bool(cur.fetchone()[0])
        except psycopg2.Error:
            self._pool.discard(conn)  # closing the session releases the lock all the same
            return
        if released:
            self._pool.give_back(conn)
        else:  # not ours any more (the session was reset?): never hand a doubtful session to another holder
            self._pool.discard(conn)


def session_lock(dsn: str, name: str, *, role: str, application: str) -> AdvisoryLock:
    """A session-level advisory lock `name` in the database at `dsn`, on a pool of its own (one idle session
    kept between turns). For a lock that is not the token coordination's: the DuckLake writers' turn
    (`warehouse/lake.py`), in the lake's own catalog database. `role` names the database in errors."""
    return AdvisoryLock(_Pool(dsn, role=role, application=application), name)


class PostgresJournalStore:
    """Journal entries as rows of `oura_token_journal`; grant locks as advisory locks."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresJournalStore({self._pool.where!r})"

    def describe(self) -> str:
        return f"table {TABLE} at {self._pool.where}"

    def _run(self, work: Callable[[Any], T]) -> T:
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    self._pool.run(self._create)
                    self._ready = True
        return self._pool.run(work)

    @staticmethod
    def _create(cur: Any) -> None:
        cur.execute("BEGIN")
        try:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            cur.execute(_SCHEMA)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                cur.execute("ROLLBACK")
            raise

    def put(self, name: str, ciphertext: str) -> None:
        def upsert(cur: Any) -> None:
            cur.execute(
                f"INSERT INTO {TABLE} (name, entry) VALUES (%s, %s) "  # noqa: S608 (fixed SQL)
                "ON CONFLICT (name) DO UPDATE SET entry = EXCLUDED.entry, written_at = clock_timestamp()",
                (name, ciphertext),
            )

        self._run(upsert)

    def get(self, name: str) -> str | None:
        def select(cur: Any) -> str | None:
            cur.execute(f"SELECT entry FROM {TABLE} WHERE name = %s", (name,))  # noqa: S608
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return self._run(select)

    def delete(self, name: str) -> None:
        self._run(lambda cur: cur.execute(f"DELETE FROM {TABLE} WHERE name = %s", (name,)))  # noqa: S608

    def names(self, prefix: str) -> list[str]:
        def select(cur: Any) -> list[str]:
            cur.execute(
                f"SELECT name FROM {TABLE} WHERE left(name, length(%s)) = %s "  # noqa: S608
                "ORDER BY written_at, name",
                (prefix, prefix),
            )
            return [str(row[0]) for row in cur.fetchall()]

        return self._run(select)

    def lock(self, name: str) -> Lock:
        return AdvisoryLock(self._pool, name)

    def forget_lock(self, name: str) -> None:
        """Nothing to clean up: an advisory lock leaves nothing behind."""


class PostgresCoordination:
    """Refresh locks and the journal in one database; one per database and process (coordination.py)."""

    def __init__(self, dsn: str) -> None:
        self._pool = _Pool(dsn)
        self._journal = PostgresJournalStore(self._pool)

    def __repr__(self) -> str:
        return f"PostgresCoordination({self._pool.where!r})"

    def refresh_lock(self, name: str) -> Lock:
        return AdvisoryLock(self._pool, name)

    def journal_store(self) -> PostgresJournalStore:
        return self._journal

    def close(self) -> None:
        self._pool.close()
