"""`Warehouse`: the one door to the DuckDB file. A connection is opened under the writer lock, in UTC, on a
file at the current schema, and held only for the caller's block.

A process outside our lock holding the file (someone's notebook or DuckDB CLI) is waited for with backoff and
named, from DuckDB's own message, as a program outside oura_assets: in our holder record while we wait (so
whoever queues behind us is told about that program, not about us) and in `WarehouseBusy` when the wait runs
out. A wait past `slow_wait_s` is logged while it lasts (`waits.WaitWatch`). With a key
(`OURA_ASSETS_WAREHOUSE_KEY`) the file is an encrypted DuckDB database, attached through
`encryption.open_attached`; queries read the same either way. Either way the file is ATTACHed to the
process's one in-memory DuckDB instance for the block and DETACHed after it (cheaper than a new instance).

The other backend is a DuckLake (`lake.py`): a `LakeLocation` instead of a path. Then there is no file:
connections are cursors of the process's lake instance, transactions take turns on the lake's writer lock
(an advisory lock in its catalog database, `lake.LakeWriter`), and a transaction that still loses a write
conflict (to a writer outside that lock) fails at COMMIT with `WarehouseConflict`. `attempts` is how
writers that may run concurrently (runs, shards, sensors, the API) write: their block is run again after a
conflict, a bounded number of times. On a DuckDB file it runs the block once, under the lock, as
`transaction` does.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb

from oura_assets.warehouse.encryption import attach, close_attached, open_attached
from oura_assets.warehouse.lake import (
    LakeLocation,
    is_conflict,
    is_lake,
    lake_cursor,
    lake_location,
    lake_schema_checked,
    lake_writer,
    mark_lake_schema_checked,
)
from oura_assets.warehouse.lock import Wait, WarehouseBusy, WarehouseHolder, WriterLock
from oura_assets.warehouse.migrations import ensure_schema_on
from oura_assets.warehouse.waits import SLOW_WAIT_S, WaitLog, WaitWatch, seconds

if TYPE_CHECKING:
    from oura_assets.config import Settings

logger = logging.getLogger(__name__)

# DuckDB 1.x/2.x: 'IO Error: Could not set lock on file "…": Conflicting lock is held in /usr/bin/python3.11
# (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency'
_DUCKDB_LOCK_ERROR = "could not set lock on file"
_DUCKDB_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")

CONFLICT_ATTEMPTS = 40
"""At most this many tries of a block that keeps losing DuckLake write conflicts, and at most the block's
wait (`timeout_s`, else `lock_timeout_s`, as for the DuckDB file's lock) in all; then `WarehouseConflict`.
DuckLake 1.5.5 conflicts per table, so every concurrent writer of a table (three shard runs) collides with
the others: the jittered backoff (0.05 s doubling to 2 s) lets the losers spread out and take turns."""
_CONFLICT_PAUSE_S = (0.05, 2.0)


class WarehouseConflict(WarehouseBusy):
    """A DuckLake transaction lost to concurrent writers (optimistic concurrency) as often as it may try.

    A `WarehouseBusy`, so callers that already answer "busy, retry later" (the API's 503 with Retry-After, a
    patient's `warehouse_busy` error in a run) do the same for it."""

    def __init__(self, location: str, purpose: str, attempts: int, waited_s: float, cause: str = ""):
        self.purpose = purpose
        self.attempts = attempts
        self.cause = cause
        RuntimeError.__init__(
            self,
            f"warehouse {location}: {purpose} lost a write conflict to concurrent writers {attempts} "
            f"time(s) and gave up after {seconds(waited_s)} (DuckLake: {cause or 'transaction conflict'}); "
            "retry later",
        )
        self.path = location
        self.holder = None
        self.waited_s = waited_s
        self.retry_after_s = 1.0

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.purpose, self.attempts, self.waited_s, self.cause))


class WarehouseAccess(Protocol):
    """What code outside the warehouse needs of it: `Warehouse`, or the Dagster resource that wraps one, so
    sync, rebuild and tokens take either and a run's code has one way in (`defs/resources.py`)."""

    def connect(
        self, purpose: str, timeout_s: float | None = None
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def transaction(
        self, purpose: str, timeout_s: float | None = None
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def attempts(
        self, purpose: str, timeout_s: float | None = None
    ) -> Iterator[AbstractContextManager[duckdb.DuckDBPyConnection]]: ...

    def reporting_waits_to(self, log: WaitLog) -> WarehouseAccess: ...


class _Attempt:
    """One try of a transaction block (`Warehouse.attempts`): swallows a conflict unless it is the last."""

    def __init__(
        self,
        warehouse: Warehouse,
        purpose: str,
        timeout_s: float | None,
        number: int,
        last: bool,
        started: float,
    ):
        self._warehouse, self._purpose, self._timeout_s, self._last = warehouse, purpose, timeout_s, last
        self._number, self._started = number, started
        self._block: AbstractContextManager[duckdb.DuckDBPyConnection] | None = None
        self.conflict: WarehouseConflict | None = None
        self.done = False

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self._block = self._warehouse.transaction(self._purpose, self._timeout_s)
        return self._block.__enter__()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        assert self._block is not None
        try:
            suppressed = bool(self._block.__exit__(exc_type, exc, tb))
        except WarehouseConflict as conflict:
            if self._last:
                waited = time.monotonic() - self._started
                raise WarehouseConflict(
                    conflict.path, self._purpose, self._number, waited, conflict.cause
                ) from None
            self.conflict = conflict
            return True
        if exc is None or suppressed:
            self.done = True
            return suppressed
        if isinstance(exc, WarehouseConflict) and not self._last:
            self.conflict = exc
            return True
        return False


class Warehouse:
    """The DuckDB file at `path`, opened only through `connect` / `transaction`; encrypted with `key`.

    A wait longer than `slow_wait_s` is reported to `wait_log` (default: this module's logger); a run hands
    its own log with `reporting_waits_to`, so the wait shows in the run's log.
    """

    def __init__(
        self,
        path: Path | str | LakeLocation,
        lock_timeout_s: float = 60.0,
        *,
        slow_wait_s: float = SLOW_WAIT_S,
        wait_log: WaitLog | None = None,
        key: str | None = None,
        lake_data_path: str | None = None,
    ):
        """`path` is the DuckDB file, or a DuckLake: a `LakeLocation`, or `ducklake:postgres:…` with its
        `lake_data_path`."""
        self.lake: LakeLocation | None = None
        if is_lake(path):
            self.lake = path if isinstance(path, LakeLocation) else lake_location(str(path), lake_data_path)
            # No file: nothing of ours locks or opens it; the path names the lake (the sync-queue stamp).
            path = Path(str(self.lake))
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._key = key
        self.slow_wait_s = slow_wait_s
        self.wait_log = wait_log
        self._resolved = self.path.expanduser().resolve()
        self._lock = WriterLock(self._resolved, str(self.path))

    @classmethod
    def from_settings(cls, settings: Settings, lock_timeout_s: float = 60.0) -> Warehouse:
        """The configured warehouse (`OURA_ASSETS_WAREHOUSE`), with its key (`OURA_ASSETS_WAREHOUSE_KEY`)."""
        return cls(settings.warehouse_path, lock_timeout_s, key=settings.warehouse_key)

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    @property
    def location(self) -> str:
        """What the warehouse is, for messages: the file, or the lake's catalog (a password shown as ***)."""
        return str(self.lake) if self.lake is not None else str(self.path)

    def __repr__(self) -> str:
        # Never the key: only whether there is one.
        return (
            f"Warehouse({self.location!r}, lock_timeout_s={self.lock_timeout_s}, encrypted={self.encrypted})"
        )

    def reporting_waits_to(self, log: WaitLog) -> Warehouse:
        """The same warehouse, reporting slow waits to `log` (a run's `context.log`) instead."""
        return Warehouse(
            self.lake or self.path,
            self.lock_timeout_s,
            slow_wait_s=self.slow_wait_s,
            wait_log=log,
            key=self._key,
        )

    def attempts(
        self, purpose: str, timeout_s: float | None = None
    ) -> Iterator[AbstractContextManager[duckdb.DuckDBPyConnection]]:
        """Tries of one transaction block, for a writer that may run beside others:

            for attempt in warehouse.attempts("write a patient's rows"):
                with attempt as conn:
                    ...  # reads and writes; may run again, so keep side effects inside the transaction

        Never `return` or `break` inside the block (assign, and return after the loop): a try that lost its
        COMMIT would leave with it (`test_no_transaction_try_returns_or_breaks_from_inside_its_block`).
        On a DuckLake, a try that lost a write conflict at COMMIT is rolled back and the block runs again
        after a jittered pause, up to `CONFLICT_ATTEMPTS` times; then `WarehouseConflict`. On a DuckDB file
        (one writer at a time, under the lock) there is exactly one try: `transaction`.
        """
        started = time.monotonic()
        tries = CONFLICT_ATTEMPTS if self.lake is not None else 1
        deadline = started + (self.lock_timeout_s if timeout_s is None else timeout_s)
        low, high = _CONFLICT_PAUSE_S
        for number in range(1, tries + 1):
            pause = random.uniform(low, min(high, low * 2**number))
            last = number == tries or time.monotonic() + pause >= deadline
            attempt = _Attempt(self, purpose, timeout_s, number, last=last, started=started)
            yield attempt
            if attempt.conflict is None:
                return
            logger.info(
                "warehouse %s: %s lost a write conflict (try %d of %d), running it again in %.2f s",
                self.location,
                purpose,
                number,
                tries,
                pause,
            )
            time.sleep(pause)
        raise AssertionError("unreachable: the last try raises its conflict")

    @contextlib.contextmanager
    def connect(self, purpose: str, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection, held exclusively (across processes and threads) for the block only.

        `purpose` is shown to whoever waits, so make it say what the block does ("dagster run 1a2b3c4d:
        write wearable_data"). Waits up to `timeout_s` (default `lock_timeout_s`) and then raises
        `WarehouseBusy`. A file without the current schema gets it (created or migrated) first.
        """
        if self.lake is not None:
            with self._lake_connection() as conn:
                yield conn
            return
        timeout = self.lock_timeout_s if timeout_s is None else timeout_s
        watch = WaitWatch(str(self.path), purpose, self.wait_log, self.slow_wait_s)
        with self._lock.hold(purpose, timeout, watch) as wait:
            conn = self._open(wait)
            waited = wait.waited_s()
            watch.finished(got_it=True)
            if 1.0 < waited < self.slow_wait_s:
                logger.info("waited %s for warehouse %s (%s)", seconds(waited), self.path, purpose)
            try:
                conn.execute("SET TimeZone = 'UTC'")
                ensure_schema_on(conn)
                yield conn
            finally:
                self._close(conn)

    @contextlib.contextmanager
    def transaction(
        self, purpose: str, timeout_s: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """`connect` inside BEGIN / COMMIT: all of the block's writes land, or (on any exception) none do.

        On a DuckLake the writers of every thread, process and host take turns (`lake.LakeWriter`: the
        catalog database's advisory lock), as they queue on the lock of a DuckDB file: concurrent writers of
        the same tables would only make each other start over at COMMIT.
        """
        turn = self._lake_turn(purpose, timeout_s) if self.lake is not None else contextlib.nullcontext()
        with turn, self.connect(purpose, timeout_s) as conn:
            started = time.monotonic()
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                # The connection is closed right after, which also discards the transaction if this fails.
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except duckdb.Error as exc:
                if self.lake is None or not is_conflict(exc):
                    raise
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                cause = next((line for line in str(exc).splitlines() if "conflict" in line.lower()), "")
                raise WarehouseConflict(
                    self.location, purpose, 1, time.monotonic() - started, cause.strip()
                ) from None

    @contextlib.contextmanager
    def _lake_turn(self, purpose: str, timeout_s: float | None) -> Iterator[None]:
        assert self.lake is not None
        wait = self.lock_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        writer = lake_writer(self.lake)
        if not writer.acquire(wait):
            raise WarehouseBusy(self.location, None, time.monotonic() - started)
        try:
            yield
        finally:
            writer.release()

    @contextlib.contextmanager
    def _lake_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        assert self.lake is not None
        conn = lake_cursor(self.lake)
        try:
            conn.execute("SET TimeZone = 'UTC'")
            if not lake_schema_checked(self.lake):
                ensure_schema_on(conn)
                mark_lake_schema_checked(self.lake)
            yield conn
        finally:
            conn.close()

    def ensure_schema(self, timeout_s: float | None = None) -> None:
        """Create or migrate the schema now (every `connect` checks it too, at the cost of one small read; on
        a lake only a process's first connection, `lake.lake_schema_checked`)."""
        with self.connect("ensure schema", timeout_s):
            pass

    @contextlib.contextmanager
    def hold(self, purpose: str, timeout_s: float | None = None) -> Iterator[None]:
        """The writer lock alone, without opening the file: for replacing the file itself (`rekey`)."""
        if self.lake is not None:
            raise ValueError(f"{self.location} is a DuckLake: it has no file to replace")
        with self._lock.hold(purpose, self.lock_timeout_s if timeout_s is None else timeout_s):
            yield

    def attach(self, conn: duckdb.DuckDBPyConnection, path: Path | str, alias: str) -> None:
        """ATTACH another DuckDB file to `conn` as `alias`, encrypted with this warehouse's key if it has one
        (a compacted copy): a copy of the warehouse is never less protected than the warehouse."""
        attach(conn, path, alias, self._key)

    def _close(self, conn: duckdb.DuckDBPyConnection) -> None:
        close_attached(conn, self._resolved)

    def _open(self, wait: Wait) -> duckdb.DuckDBPyConnection:
        """Open DuckDB, waiting with backoff while a process outside our lock holds the file."""
        pause = 0.02
        blocked = False
        try:
            while True:
                try:
                    return open_attached(self._resolved, self._key)
                except duckdb.IOException as exc:
                    holder = foreign_holder(exc)
                    if holder is None:
                        raise
                # Whoever queues behind us reads this and learns who really holds the file.
                self._lock.note_blocked_by(holder)
                blocked = True
                remaining = wait.remaining_s()
                if remaining <= 0:
                    raise self._lock.give_up(wait, holder) from None
                wait.still_waiting(holder)
                time.sleep(min(pause, remaining, max(wait.slice_s(), 0.001)))
                pause = min(pause * 2, 0.5)
        finally:
            if blocked:
                self._lock.note_blocked_by(None)


def foreign_holder(error: duckdb.IOException) -> WarehouseHolder | None:
    """The program DuckDB names in its lock error (None when `error` is not a lock conflict)."""
    message = str(error)
    if _DUCKDB_LOCK_ERROR not in message.lower():
        return None
    found = _DUCKDB_LOCK_HOLDER.search(message)
    return WarehouseHolder(
        pid=int(found["pid"]) if found else None,
        purpose=found["exe"] if found else "a program DuckDB did not name",
        foreign=True,
    )
