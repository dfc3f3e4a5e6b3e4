"""The DuckDB warehouse: its schema, the one door every process goes through, and every read and write.

DuckDB lets one process at a time open a file read-write, and a second one fails at once with an IOException.
Here the connection API, Dagster sensors, schedule runs and backfill runs all share one file, so instead of
each of them retrying blindly (as `dagster_duckdb.DuckDBResource` does), every process queues on a
cross-process `filelock` beside the file, records who holds it and why in `<file>.holder`, and holds it only
for one short block; a writer that just let go steps aside when someone is waiting, so a long run of short
transactions cannot starve an API request. A waiter that runs out of patience gets `WarehouseBusy`, whose
message names the holder, instead of a stack trace; a process outside this module holding the file
(someone's DuckDB CLI) is waited for with backoff and named from DuckDB's own message.

The functions below take an open connection, so a caller composes several of them in one transaction.
Tables are the public contract (CONTRACT §5): writes are idempotent (primary keys, a window replaced by
delete-then-upsert), values always travel as parameters, and bulk rows reach DuckDB as JSON arrays that
DuckDB parses itself: 100k heart-rate samples land in about 0.3 s, where row-by-row binding takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import filelock

try:
    import fcntl
except ImportError:  # Windows: no waiter hand-off, the lock itself still works
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # only an annotation here: DuckDB's `.pl()` imports polars itself, when a frame is read
    import polars as pl

logger = logging.getLogger(__name__)

SOURCE = "oura"
DOCUMENT_COLLECTIONS = ("daily_readiness", "daily_sleep", "sleep", "daily_activity")
RAW_COLLECTIONS = (*DOCUMENT_COLLECTIONS, "heartrate")
CONNECTION_STATUSES = frozenset({"active", "reconnect_required", "disconnected"})
SYNC_REQUEST_STATUSES = frozenset({"queued", "running", "success", "partial", "failed"})
SYNC_RESULT_STATUSES = ("success", "partial", "failed")
EVENT_TYPES = frozenset(
    {"wearable_connected", "wearable_sync", "wearable_reconnect_required", "wearable_disconnected"}
)
DEFAULT_RETRY_AFTER_S = 5.0
_STAGE_CHUNK = 50_000
_POLL_S = 0.02
_HANDOFF_S = 4 * _POLL_S

_TERMINAL_SYNC_STATUSES = frozenset({"success", "partial", "failed"})
# DuckDB 1.x/2.x: 'IO Error: Could not set lock on file "…": Conflicting lock is held in /usr/bin/python3.11
# (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency'
_DUCKDB_LOCK_ERROR = "could not set lock on file"
_DUCKDB_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


class WarehouseBusy(RuntimeError):
    """The warehouse stayed locked past the caller's wait. The message names the holder; retry later."""

    def __init__(
        self,
        path: str,
        holder: WarehouseHolder | None,
        waited_s: float,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ):
        self.path = path
        self.holder = holder
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s
        who = holder.describe() if holder else "an unknown process"
        super().__init__(f"warehouse {path} is busy: held by {who}; gave up after {_seconds(waited_s)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.holder, self.waited_s, self.retry_after_s))


@dataclass(frozen=True)
class WarehouseHolder:
    """Who holds the warehouse: read from `<file>.holder`, or parsed from DuckDB's own lock error."""

    pid: int | None
    purpose: str
    host: str | None = None
    since: datetime | None = None
    foreign: bool = False

    def held_for_s(self, now: datetime | None = None) -> float | None:
        if self.since is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.since).total_seconds())

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "a process"
        if self.host and self.host != socket.gethostname():
            who += f" on {self.host}"
        held = self.held_for_s()
        return f"{who} ({self.purpose})" + (f" for {_seconds(held)}" if held is not None else "")

    def to_json(self) -> str:
        since = self.since.isoformat() if self.since else None
        return json.dumps({"pid": self.pid, "host": self.host, "purpose": self.purpose, "since": since})

    @classmethod
    def from_json(cls, text: str) -> WarehouseHolder:
        data = json.loads(text)
        since = datetime.fromisoformat(data["since"]) if data.get("since") else None
        return cls(
            pid=data.get("pid"), purpose=str(data.get("purpose", "")), host=data.get("host"), since=since
        )


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


class _ProcessGuard:
    """This process's side of the writer lock on one file: threads queue here, then on the file lock.

    `filelock` is re-entrant per thread (or per process with thread_local=False), so on its own it would let
    two threads of the API in at once; the RLock serializes threads and keeps one thread's nesting harmless.

    Neither an RLock nor a polled file lock is fair: a run that writes patient after patient back to back
    takes the lock again before a waiting API request's next poll, and starves it. So waiters make
    themselves known (threads with a counter, processes with a shared `flock` on `<file>.waiters`, which
    the OS drops if they die), and whoever released the lock a moment ago and sees a waiter steps aside
    for `_HANDOFF_S` before taking it again.
    """

    def __init__(self, path: Path):
        self.thread_lock = threading.RLock()
        self.file_lock = filelock.FileLock(f"{path}.lock", thread_local=False)
        self.waiters_path = f"{path}.waiters"
        self.threads_waiting = 0
        self.released_at = -_HANDOFF_S
        self.owner: int | None = None
        self._counter = threading.Lock()

    def step_aside_if_others_wait(self) -> None:
        if self.owner == threading.get_ident() or time.monotonic() - self.released_at >= _HANDOFF_S:
            return
        if self.threads_waiting > 0 or self._other_process_waits():
            time.sleep(_HANDOFF_S)

    def step_aside_for_other_processes(self) -> None:
        """Called holding the thread lock: a thread that queued behind a sibling (and so skipped the check
        above) must not hand the file lock straight on while another process waits for it."""
        if time.monotonic() - self.released_at < _HANDOFF_S and self._other_process_waits():
            time.sleep(_HANDOFF_S)

    @contextlib.contextmanager
    def waiting_thread(self) -> Iterator[None]:
        with self._counter:
            self.threads_waiting += 1
        try:
            yield
        finally:
            with self._counter:
                self.threads_waiting -= 1

    @contextlib.contextmanager
    def waiting_process(self) -> Iterator[None]:
        """Hold a shared lock on the waiters file while this process waits for the writer lock."""
        if fcntl is None:
            yield
            return
        fd = os.open(self.waiters_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _other_process_waits(self) -> bool:
        if fcntl is None:
            return False
        fd = os.open(self.waiters_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


_guards: dict[str, _ProcessGuard] = {}
_guards_lock = threading.Lock()


def _forget_process_state() -> None:
    """A forked child must not inherit the parent's lock objects (possibly held by a thread it lacks)."""
    global _guards_lock
    _guards_lock = threading.Lock()
    _guards.clear()


os.register_at_fork(after_in_child=_forget_process_state)


def _guard_for(path: Path) -> _ProcessGuard:
    key = str(path)
    with _guards_lock:
        guard = _guards.get(key)
        if guard is None:
            guard = _guards[key] = _ProcessGuard(path)
        return guard


class Warehouse:
    """The DuckDB file at `path`, opened only through `connect` / `transaction`."""

    def __init__(self, path: Path | str, lock_timeout_s: float = 60.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._resolved = self.path.expanduser().resolve()
        self._holder_path = Path(f"{self._resolved}.holder")

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r}, lock_timeout_s={self.lock_timeout_s})"

    @contextlib.contextmanager
    def connect(self, purpose: str, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection, held exclusively (across processes and threads) for the block only.

        `purpose` is shown to whoever waits, so make it say what the block does ("dagster run 1a2b3c4d:
        write wearable_data"). Waits up to `timeout_s` (default `lock_timeout_s`) and then raises
        `WarehouseBusy`. A file without the current schema gets it (created or migrated) first.
        """
        timeout = self.lock_timeout_s if timeout_s is None else timeout_s
        began = time.monotonic()
        deadline = began + timeout
        self._resolved.parent.mkdir(parents=True, exist_ok=True)
        guard = _guard_for(self._resolved)
        guard.step_aside_if_others_wait()
        with guard.waiting_thread():
            if not guard.thread_lock.acquire(timeout=max(0.0, timeout)):
                raise self._busy(self._read_holder(), time.monotonic() - began)
        try:
            outermost = guard.owner is None
            if outermost:
                guard.step_aside_for_other_processes()
            self._acquire_file_lock(guard, deadline, began)
            try:
                if outermost:
                    guard.owner = threading.get_ident()
                    self._write_holder(purpose)
                conn = self._open(deadline, began)
                waited = time.monotonic() - began
                if waited > 1.0:
                    logger.info("waited %s for warehouse %s (%s)", _seconds(waited), self.path, purpose)
                try:
                    conn.execute("SET TimeZone = 'UTC'")
                    self._ensure_schema_on(conn)
                    yield conn
                finally:
                    conn.close()
            finally:
                if outermost:
                    with contextlib.suppress(OSError):
                        self._holder_path.unlink()
                guard.file_lock.release()
                if outermost:
                    guard.owner = None
                    guard.released_at = time.monotonic()
        finally:
            guard.thread_lock.release()

    def _acquire_file_lock(self, guard: _ProcessGuard, deadline: float, began: float) -> None:
        try:
            guard.file_lock.acquire(timeout=0)
            return
        except filelock.Timeout:
            pass
        with guard.waiting_process():
            try:
                guard.file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=_POLL_S)
            except filelock.Timeout:
                raise self._busy(self._read_holder(), time.monotonic() - began) from None

    @contextlib.contextmanager
    def transaction(
        self, purpose: str, timeout_s: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """`connect` inside BEGIN / COMMIT: all of the block's writes land, or (on any exception) none do."""
        with self.connect(purpose, timeout_s) as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                # The connection is closed right after, which also discards the transaction if this fails.
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def ensure_schema(self, timeout_s: float | None = None) -> None:
        """Create or migrate the schema now (every `connect` checks it too, at the cost of one small read)."""
        with self.connect("ensure schema", timeout_s):
            pass

    def _open(self, deadline: float, began: float) -> duckdb.DuckDBPyConnection:
        """Open DuckDB, waiting with backoff while a process outside our lock holds the file."""
        pause = 0.02
        while True:
            try:
                return duckdb.connect(str(self._resolved))
            except duckdb.IOException as exc:
                if _DUCKDB_LOCK_ERROR not in str(exc).lower():
                    raise
                found = _DUCKDB_LOCK_HOLDER.search(str(exc))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = WarehouseHolder(
                        pid=int(found["pid"]) if found else None,
                        purpose=f"{found['exe'] if found else 'another program'}, a DuckDB connection "
                        "outside oura_assets' lock",
                        foreign=True,
                    )
                    raise self._busy(holder, time.monotonic() - began) from None
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.5)

    def _busy(self, holder: WarehouseHolder | None, waited_s: float) -> WarehouseBusy:
        return WarehouseBusy(str(self.path), holder, waited_s, DEFAULT_RETRY_AFTER_S)

    def _write_holder(self, purpose: str) -> None:
        holder = WarehouseHolder(
            pid=os.getpid(), purpose=purpose, host=socket.gethostname(), since=datetime.now(UTC)
        )
        tmp = self._holder_path.with_name(f"{self._holder_path.name}.{os.getpid()}.tmp")
        tmp.write_text(holder.to_json())
        tmp.replace(self._holder_path)

    def _read_holder(self) -> WarehouseHolder | None:
        try:
            return WarehouseHolder.from_json(self._holder_path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _ensure_schema_on(self, conn: duckdb.DuckDBPyConnection) -> None:
        # One indexed read (~0.2 ms) rather than a per-process cache: a file deleted and recreated under a
        # running process (`make clean` during `make dev`) gets its schema back on the next connection.
        try:
            (version,) = conn.execute("SELECT max(version) FROM main.schema_version").fetchone() or (None,)
        except duckdb.CatalogException:
            version = None
        if version is None or version < SCHEMA_VERSION:
            _migrate(conn)


_DOCUMENT_TABLE = """
    patient_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    day DATE NOT NULL,
    document JSON NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (patient_id, id)
"""

_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "initial schema: CONTRACT §5 tables and the project's bookkeeping tables",
        (
            "CREATE SCHEMA IF NOT EXISTS patient_graph",
            "CREATE SCHEMA IF NOT EXISTS oura_raw",
            """CREATE TABLE IF NOT EXISTS patient_graph.wearable_data (
                patient_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                metric_type VARCHAR NOT NULL,
                day DATE NOT NULL,
                metrics JSON NOT NULL,
                synced_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (patient_id, source, metric_type, day)
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.patient_wearable_daily_stats (
                patient_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                day DATE NOT NULL,
                readiness_score INTEGER,
                sleep_score INTEGER,
                activity_score INTEGER,
                total_sleep_seconds INTEGER,
                steps INTEGER,
                active_calories INTEGER,
                total_calories INTEGER,
                average_hrv DOUBLE,
                resting_heart_rate INTEGER,
                hr_min INTEGER,
                hr_max INTEGER,
                hr_avg DOUBLE,
                hr_samples INTEGER,
                utc_offset_minutes INTEGER,
                updated_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (patient_id, source, day)
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.patient_events (
                event_id VARCHAR PRIMARY KEY,
                patient_id VARCHAR NOT NULL,
                event_type VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                occurred_at TIMESTAMPTZ NOT NULL,
                payload JSON NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.wearable_connections (
                patient_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                oura_user_id VARCHAR,
                scopes VARCHAR[],
                access_token_enc VARCHAR,
                refresh_token_enc VARCHAR,
                expires_at TIMESTAMPTZ,
                connected_at TIMESTAMPTZ,
                last_synced_at TIMESTAMPTZ,
                last_error VARCHAR,
                updated_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (patient_id, source)
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.sync_requests (
                sync_id VARCHAR PRIMARY KEY,
                patient_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                start_day DATE NOT NULL,
                end_day DATE NOT NULL,
                status VARCHAR NOT NULL,
                requested_at TIMESTAMPTZ NOT NULL,
                run_id VARCHAR,
                started_at TIMESTAMPTZ,
                finished_at TIMESTAMPTZ,
                result JSON
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.sync_results (
                run_id VARCHAR NOT NULL,
                patient_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                start_day DATE NOT NULL,
                end_day DATE NOT NULL,
                rows JSON NOT NULL,
                errors JSON NOT NULL,
                recorded_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (run_id, patient_id)
            )""",
            """CREATE TABLE IF NOT EXISTS patient_graph.oauth_states (
                state_hash VARCHAR PRIMARY KEY,
                patient_id VARCHAR NOT NULL,
                created_at TIMESTAMPTZ NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL,
                used_at TIMESTAMPTZ
            )""",
            *(f"CREATE TABLE IF NOT EXISTS oura_raw.{c} ({_DOCUMENT_TABLE})" for c in DOCUMENT_COLLECTIONS),
            """CREATE TABLE IF NOT EXISTS oura_raw.heartrate (
                patient_id VARCHAR NOT NULL,
                timestamp TIMESTAMPTZ NOT NULL,
                source VARCHAR NOT NULL,
                bpm INTEGER,
                document JSON NOT NULL,
                fetched_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (patient_id, timestamp, source)
            )""",
        ),
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def _migrate(conn: duckdb.DuckDBPyConnection) -> None:
    """Apply the migrations newer than the file's `main.schema_version`, each in its own transaction."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS main.schema_version "
        "(version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM main.schema_version").fetchone() or (0,)
    for version, description, statements in _MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO main.schema_version VALUES (?, ?, ?)", [version, description, datetime.now(UTC)]
            )
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        logger.info("warehouse schema migrated to version %d (%s)", version, description)


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _day(value: date | str) -> date:
    if isinstance(value, datetime):
        raise TypeError(f"expected a calendar day, got a datetime {value!r}")
    return value if isinstance(value, date) else date.fromisoformat(value)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: object) -> str:
    return json.dumps(
        value, default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


_MISSING = object()


def _get(row: object, name: str, default: object = _MISSING) -> Any:
    """A field of a row given as a mapping or as an object (normalize's dataclasses)."""
    value = row.get(name, default) if isinstance(row, Mapping) else getattr(row, name, default)
    if value is _MISSING:
        raise ValueError(f"row {row!r} has no {name!r}")
    return value


def _stage(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    select: str,
    records: Sequence[object],
    params: Sequence[Any],
    last_per: Sequence[str],
) -> None:
    """Load `records` into the temporary table `name`, parsed by DuckDB from JSON, the last one per key kept.

    `select` lists the staged columns as expressions over `value` (one record); `params` are its parameters.
    Only the last record per `last_per` columns is kept (a document given twice: the later one wins).
    Records travel as JSON arrays of `_STAGE_CHUNK`: one parameter per chunk is far cheaper than binding
    row by row, and chunks keep DuckDB's parse linear (one 35 MB array took 3x longer per row).
    """
    raw = f"{name}_all"
    for offset in range(0, max(len(records), 1), _STAGE_CHUNK):
        into = f"CREATE OR REPLACE TEMP TABLE {raw} AS" if offset == 0 else f"INSERT INTO {raw}"
        conn.execute(
            f"{into} SELECT key, {select} "  # noqa: S608 (constants, not values)
            "FROM (SELECT CAST(key AS BIGINT) + ? AS key, value FROM json_each(?::JSON))",
            [*params, offset, _dumps(records[offset : offset + _STAGE_CHUNK])],
        )
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * EXCLUDE (key) FROM {raw} "  # noqa: S608
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(last_per)} ORDER BY key DESC) = 1"
    )
    conn.execute(f"DROP TABLE {raw}")


def _mirror(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    staging: str,
    keys: Sequence[str],
    window: str,
    window_params: Sequence[Any],
) -> int:
    """Make `table` hold exactly the staged rows inside `window`, and upsert staged rows outside it.

    Equivalent to delete-the-window-then-insert, but rows whose key is staged again are updated in place
    rather than deleted and re-inserted, which DuckDB's primary-key index handles several times faster.
    """
    match = " AND ".join(f"s.{k} = {table}.{k}" for k in keys)
    conn.execute(
        f"DELETE FROM {table} WHERE {window} AND NOT EXISTS (SELECT 1 FROM {staging} s WHERE {match})",  # noqa: S608
        list(window_params),
    )
    (written,) = conn.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM {staging}").fetchone()  # noqa: S608
    conn.execute(f"DROP TABLE {staging}")
    return int(written)


def _window(start: date, end: date) -> tuple[date, date]:
    start, end = _day(start), _day(end)
    if end < start:
        raise ValueError(f"day window ends ({end}) before it starts ({start})")
    return start, end


def _collection(collection: str) -> str:
    if collection not in DOCUMENT_COLLECTIONS:
        raise ValueError(
            f"unknown Oura document collection {collection!r}; expected one of {DOCUMENT_COLLECTIONS}"
        )
    return collection


def replace_raw_documents(
    conn: duckdb.DuckDBPyConnection,
    collection: str,
    patient_id: str,
    start_day: date,
    end_day: date,
    documents: Iterable[Mapping[str, Any]],
    fetched_at: datetime,
) -> int:
    """Mirror Oura's `collection` for the patient's days [start_day, end_day]; returns the documents written.

    Rows of the window that Oura no longer returns are deleted; every given document replaces its older
    version by `id`, including one whose `day` lies outside the window. Each document needs `id` and `day`.
    """
    table = f"oura_raw.{_collection(collection)}"
    start, end = _window(start_day, end_day)
    records = []
    for doc in documents:
        if not isinstance(doc, Mapping) or doc.get("id") in (None, "") or not doc.get("day"):
            raise ValueError(f"{collection}: a document needs an `id` and a `day`, got {str(doc)[:200]}")
        try:
            day = _day(doc["day"])
        except (TypeError, ValueError):
            raise ValueError(f"{collection} {doc['id']}: `day` {doc['day']!r} is not a date") from None
        records.append({"id": str(doc["id"]), "day": day, "document": doc})
    _stage(
        conn,
        "_staged_documents",
        "?::VARCHAR AS patient_id, value->>'id' AS id, CAST(value->>'day' AS DATE) AS day, "
        "value->'document' AS document, ?::TIMESTAMPTZ AS fetched_at",
        records,
        [patient_id, _utc(fetched_at)],
        last_per=["id"],
    )
    return _mirror(
        conn,
        table,
        "_staged_documents",
        ("patient_id", "id"),
        "patient_id = ? AND day BETWEEN ? AND ?",
        [patient_id, start, end],
    )


def read_raw_documents(
    conn: duckdb.DuckDBPyConnection, collection: str, patient_id: str, start_day: date, end_day: date
) -> list[dict[str, Any]]:
    """The patient's stored documents of `collection` with `day` in [start_day, end_day], by day then id."""
    table = f"oura_raw.{_collection(collection)}"
    rows = conn.execute(
        f"SELECT document FROM {table} WHERE patient_id = ? AND day BETWEEN ? AND ? ORDER BY day, id",  # noqa: S608
        [patient_id, _day(start_day), _day(end_day)],
    ).fetchall()
    return [json.loads(document) for (document,) in rows]


def replace_raw_heartrate(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start: datetime,
    end: datetime,
    samples: Iterable[Mapping[str, Any]],
    fetched_at: datetime,
) -> int:
    """Mirror Oura's heart rate for the instants [start, end); returns the distinct samples written.

    Samples are keyed by (timestamp instant, source): "…+02:00" and the same instant in "Z" are one sample,
    and the last one given wins. A timestamp without an offset is taken to be UTC.
    """
    if _utc(end) < _utc(start):
        raise ValueError(f"heart-rate window ends ({end}) before it starts ({start})")
    samples = samples if isinstance(samples, Sequence) else list(samples)
    _stage(
        conn,
        "_staged_heartrate",
        "?::VARCHAR AS patient_id, CAST(value->>'timestamp' AS TIMESTAMPTZ) AS timestamp, "
        "value->>'source' AS source, CAST(value->>'bpm' AS INTEGER) AS bpm, value AS document, "
        "?::TIMESTAMPTZ AS fetched_at",
        samples,
        [patient_id, _utc(fetched_at)],
        last_per=["timestamp", "source"],
    )
    (incomplete,) = conn.execute(
        "SELECT count(*) FROM _staged_heartrate WHERE timestamp IS NULL OR source IS NULL"
    ).fetchone()
    if incomplete:
        conn.execute("DROP TABLE _staged_heartrate")
        raise ValueError(f"heartrate: {incomplete} sample(s) lack a `timestamp` or a `source`")
    return _mirror(
        conn,
        "oura_raw.heartrate",
        "_staged_heartrate",
        ("patient_id", "timestamp", "source"),
        "patient_id = ? AND timestamp >= ? AND timestamp < ?",
        [patient_id, _utc(start), _utc(end)],
    )


def read_raw_heartrate(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """The patient's samples in [start, end) as a polars frame: timestamp (UTC), bpm, source; by time."""
    return conn.sql(
        "SELECT timestamp, bpm, source FROM oura_raw.heartrate "
        "WHERE patient_id = $patient_id AND timestamp >= $start AND timestamp < $end "
        "ORDER BY timestamp, source",
        params={"patient_id": patient_id, "start": _utc(start), "end": _utc(end)},
    ).pl()


def patients_with_raw_data(conn: duckdb.DuckDBPyConnection, start_day: date, end_day: date) -> list[str]:
    """Patients with any raw document on days [start_day, end_day], or heart rate within a day of them."""
    start, end = _day(start_day), _day(end_day)
    documents = " UNION ".join(
        f"SELECT patient_id FROM oura_raw.{c} WHERE day BETWEEN $start AND $end"  # noqa: S608 (constants)
        for c in DOCUMENT_COLLECTIONS
    )
    rows = conn.execute(
        f"SELECT patient_id FROM ({documents} UNION SELECT patient_id FROM oura_raw.heartrate "  # noqa: S608
        "WHERE timestamp >= $start::TIMESTAMPTZ - INTERVAL 1 DAY "
        "AND timestamp < $end::TIMESTAMPTZ + INTERVAL 2 DAY) ORDER BY patient_id",
        {"start": start, "end": end},
    ).fetchall()
    return [patient_id for (patient_id,) in rows]


def _check_patient(row: object, patient_id: str) -> None:
    found = _get(row, "patient_id", patient_id)
    if found != patient_id:
        raise ValueError(f"row for patient {found!r} given while writing patient {patient_id!r}")
    source = _get(row, "source", SOURCE)
    if source != SOURCE:
        raise ValueError(f"row with source {source!r}; this warehouse writes source {SOURCE!r} only")


def replace_wearable_data(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    synced_at: datetime,
) -> int:
    """Make the patient's `wearable_data` for days [start_day, end_day] exactly `rows`; returns rows written.

    A row is a mapping or an object (`normalize.WearableRow`) with metric_type, day and metrics (a dict).
    """
    start, end = _window(start_day, end_day)
    records = []
    for row in rows:
        _check_patient(row, patient_id)
        metrics = _get(row, "metrics")
        if not isinstance(metrics, Mapping):
            raise ValueError(f"wearable_data row metrics must be a mapping, got {type(metrics).__name__}")
        records.append(
            {"metric_type": str(_get(row, "metric_type")), "day": _day(_get(row, "day")), "metrics": metrics}
        )
    _stage(
        conn,
        "_staged_wearable_data",
        "?::VARCHAR AS patient_id, ?::VARCHAR AS source, value->>'metric_type' AS metric_type, "
        "CAST(value->>'day' AS DATE) AS day, value->'metrics' AS metrics, ?::TIMESTAMPTZ AS synced_at",
        records,
        [patient_id, SOURCE, _utc(synced_at)],
        last_per=["metric_type", "day"],
    )
    return _mirror(
        conn,
        "patient_graph.wearable_data",
        "_staged_wearable_data",
        ("patient_id", "source", "metric_type", "day"),
        "patient_id = ? AND source = ? AND day BETWEEN ? AND ?",
        [patient_id, SOURCE, start, end],
    )


_DAILY_STATS_COLUMNS: dict[str, str] = {
    "readiness_score": "INTEGER",
    "sleep_score": "INTEGER",
    "activity_score": "INTEGER",
    "total_sleep_seconds": "INTEGER",
    "steps": "INTEGER",
    "active_calories": "INTEGER",
    "total_calories": "INTEGER",
    "average_hrv": "DOUBLE",
    "resting_heart_rate": "INTEGER",
    "hr_min": "INTEGER",
    "hr_max": "INTEGER",
    "hr_avg": "DOUBLE",
    "hr_samples": "INTEGER",
    "utc_offset_minutes": "INTEGER",
}


def replace_daily_stats(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    start_day: date,
    end_day: date,
    rows: Iterable[object],
    updated_at: datetime,
) -> int:
    """Make the patient's daily stats for days [start_day, end_day] exactly `rows`; returns rows written.

    A row is a mapping or an object (`normalize.DailyStatsRow`) with day and the stats columns; a missing
    stats field is stored as NULL.
    """
    start, end = _window(start_day, end_day)
    records = []
    for row in rows:
        _check_patient(row, patient_id)
        record: dict[str, Any] = {"day": _day(_get(row, "day"))}
        record.update({column: _get(row, column, None) for column in _DAILY_STATS_COLUMNS})
        records.append(record)
    stats = ", ".join(f"CAST(value->>'{c}' AS {t}) AS {c}" for c, t in _DAILY_STATS_COLUMNS.items())
    _stage(
        conn,
        "_staged_daily_stats",
        f"?::VARCHAR AS patient_id, ?::VARCHAR AS source, CAST(value->>'day' AS DATE) AS day, {stats}, "
        "?::TIMESTAMPTZ AS updated_at",
        records,
        [patient_id, SOURCE, _utc(updated_at)],
        last_per=["day"],
    )
    return _mirror(
        conn,
        "patient_graph.patient_wearable_daily_stats",
        "_staged_daily_stats",
        ("patient_id", "source", "day"),
        "patient_id = ? AND source = ? AND day BETWEEN ? AND ?",
        [patient_id, SOURCE, start, end],
    )


@dataclass(frozen=True)
class ConnectionRecord:
    """A `wearable_connections` row. The encrypted tokens stay out of its repr (and so out of logs)."""

    patient_id: str
    source: str
    status: str
    oura_user_id: str | None
    scopes: tuple[str, ...]
    access_token_enc: str | None = field(repr=False)
    refresh_token_enc: str | None = field(repr=False)
    expires_at: datetime | None
    connected_at: datetime | None
    last_synced_at: datetime | None
    last_error: str | None
    updated_at: datetime | None


def _columns(record: type) -> str:
    """The SELECT list of a record dataclass: its fields are its table's columns, in the same order."""
    return ", ".join(f.name for f in fields(record))


def _values(record: type, row: Sequence[Any]) -> dict[str, Any]:
    """A row selected with `_columns(record)`, by column name."""
    return dict(zip((f.name for f in fields(record)), row, strict=True))


_CONNECTION_COLUMNS = _columns(ConnectionRecord)


def _connection(row: Sequence[Any]) -> ConnectionRecord:
    values = _values(ConnectionRecord, row)
    values["scopes"] = tuple(values["scopes"] or ())
    return ConnectionRecord(**values)


def upsert_connection(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    *,
    oura_user_id: str | None,
    scopes: Iterable[str],
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    connected_at: datetime,
) -> None:
    """Store a new (or renewed) connection: tokens replaced, status `active`, last error cleared.

    The tokens must already be encrypted (tokens.py). A reconnect without an Oura user id keeps the known one.
    """
    conn.execute(
        f"""
        INSERT INTO patient_graph.wearable_connections ({_CONNECTION_COLUMNS})
        VALUES (?, ?, 'active', ?, ?, ?, ?, ?, ?, NULL, NULL, ?)
        ON CONFLICT (patient_id, source) DO UPDATE SET
            status = 'active',
            oura_user_id = coalesce(excluded.oura_user_id, wearable_connections.oura_user_id),
            scopes = excluded.scopes,
            access_token_enc = excluded.access_token_enc,
            refresh_token_enc = excluded.refresh_token_enc,
            expires_at = excluded.expires_at,
            connected_at = excluded.connected_at,
            last_error = NULL,
            updated_at = excluded.updated_at
        """,  # noqa: S608 (column list is a constant)
        [
            patient_id,
            SOURCE,
            oura_user_id,
            list(scopes),
            access_token_enc,
            refresh_token_enc,
            _utc(expires_at),
            _utc(connected_at),
            datetime.now(UTC),
        ],
    )


def get_connection(
    conn: duckdb.DuckDBPyConnection, patient_id: str, source: str = SOURCE
) -> ConnectionRecord | None:
    row = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE patient_id = ? AND source = ?",
        [patient_id, source],
    ).fetchone()
    return None if row is None else _connection(row)


def list_connections(conn: duckdb.DuckDBPyConnection, patient_id: str) -> list[ConnectionRecord]:
    """All of the patient's connections, whatever their status, by source."""
    rows = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE patient_id = ? ORDER BY source",
        [patient_id],
    ).fetchall()
    return [_connection(row) for row in rows]


def list_active_connections(
    conn: duckdb.DuckDBPyConnection, patient_id: str | None = None
) -> list[ConnectionRecord]:
    """Oura connections with status `active` (of one patient when given), by patient id."""
    rows = conn.execute(
        f"SELECT {_CONNECTION_COLUMNS} FROM patient_graph.wearable_connections "  # noqa: S608
        "WHERE source = ? AND status = 'active' AND (? IS NULL OR patient_id = ?) ORDER BY patient_id",
        [SOURCE, patient_id, patient_id],
    ).fetchall()
    return [_connection(row) for row in rows]


def save_tokens(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    *,
    access_token_enc: str,
    refresh_token_enc: str,
    expires_at: datetime,
    scopes: Iterable[str] | None = None,
) -> bool:
    """Store a refreshed (encrypted) token pair; scopes are kept unless given. Returns whether it was stored.

    A disconnected connection is left alone (False): the patient's disconnect must win over a refresh that
    was in flight when it happened.
    """
    row = conn.execute(
        """
        UPDATE patient_graph.wearable_connections
        SET access_token_enc = ?, refresh_token_enc = ?, expires_at = ?,
            scopes = coalesce(?::VARCHAR[], scopes), updated_at = ?
        WHERE patient_id = ? AND source = ? AND status <> 'disconnected'
        RETURNING patient_id
        """,
        [
            access_token_enc,
            refresh_token_enc,
            _utc(expires_at),
            None if scopes is None else list(scopes),
            datetime.now(UTC),
            patient_id,
            SOURCE,
        ],
    ).fetchone()
    return row is not None


def set_connection_status(
    conn: duckdb.DuckDBPyConnection, patient_id: str, status: str, *, last_error: str | None = None
) -> bool:
    """Set the connection's status and last error (None clears it). Returns whether the connection exists."""
    if status not in CONNECTION_STATUSES:
        raise ValueError(
            f"unknown connection status {status!r}; expected one of {sorted(CONNECTION_STATUSES)}"
        )
    row = conn.execute(
        "UPDATE patient_graph.wearable_connections SET status = ?, last_error = ?, updated_at = ? "
        "WHERE patient_id = ? AND source = ? RETURNING patient_id",
        [status, last_error, datetime.now(UTC), patient_id, SOURCE],
    ).fetchone()
    return row is not None


def mark_synced(conn: duckdb.DuckDBPyConnection, patient_id: str, at: datetime) -> bool:
    """Record a sync that landed data: `last_synced_at` moves to `at` and the last error is cleared."""
    row = conn.execute(
        "UPDATE patient_graph.wearable_connections SET last_synced_at = ?, last_error = NULL, updated_at = ? "
        "WHERE patient_id = ? AND source = ? RETURNING patient_id",
        [_utc(at), datetime.now(UTC), patient_id, SOURCE],
    ).fetchone()
    return row is not None


def delete_tokens(conn: duckdb.DuckDBPyConnection, patient_id: str) -> bool:
    """Disconnect: forget both tokens and mark the connection `disconnected`. Returns whether it existed."""
    row = conn.execute(
        "UPDATE patient_graph.wearable_connections SET access_token_enc = NULL, refresh_token_enc = NULL, "
        "expires_at = NULL, status = 'disconnected', updated_at = ? "
        "WHERE patient_id = ? AND source = ? RETURNING patient_id",
        [datetime.now(UTC), patient_id, SOURCE],
    ).fetchone()
    return row is not None


def record_event(
    conn: duckdb.DuckDBPyConnection,
    *,
    patient_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = SOURCE,
) -> str:
    """Append a `patient_events` row and return its id; an `event_id` already recorded is left as it was."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; expected one of {sorted(EVENT_TYPES)}")
    event_id = event_id or str(uuid.uuid4())
    conn.execute(
        "INSERT INTO patient_graph.patient_events "
        "(event_id, patient_id, event_type, source, occurred_at, payload) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        [event_id, patient_id, event_type, source, _utc(occurred_at or datetime.now(UTC)), _dumps(payload)],
    )
    return event_id


@dataclass(frozen=True)
class SyncRequestRecord:
    """A `sync_requests` row: a sync the connection API queued for the `oura_sync_requests` sensor."""

    sync_id: str
    patient_id: str
    source: str
    start_day: date
    end_day: date
    status: str
    requested_at: datetime
    run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: Any


_SYNC_REQUEST_COLUMNS = _columns(SyncRequestRecord)


def _sync_request(row: Sequence[Any]) -> SyncRequestRecord:
    values = _values(SyncRequestRecord, row)
    values["result"] = _loads(values["result"])
    return SyncRequestRecord(**values)


def create_sync_request(
    conn: duckdb.DuckDBPyConnection, *, patient_id: str, start_day: date, end_day: date
) -> str:
    """Queue a sync of the patient's days [start_day, end_day]; returns the new sync id."""
    start, end = _day(start_day), _day(end_day)
    if end < start:
        raise ValueError(f"sync request ends ({end}) before it starts ({start})")
    sync_id = str(uuid.uuid4())
    conn.execute(
        f"INSERT INTO patient_graph.sync_requests ({_SYNC_REQUEST_COLUMNS}) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, 'queued', ?, NULL, NULL, NULL, NULL)",
        [sync_id, patient_id, SOURCE, start, end, datetime.now(UTC)],
    )
    return sync_id


def queued_sync_requests(conn: duckdb.DuckDBPyConnection, limit: int = 50) -> list[SyncRequestRecord]:
    """The oldest `limit` requests still queued, oldest first."""
    rows = conn.execute(
        f"SELECT {_SYNC_REQUEST_COLUMNS} FROM patient_graph.sync_requests "  # noqa: S608
        "WHERE status = 'queued' ORDER BY requested_at, sync_id LIMIT ?",
        [limit],
    ).fetchall()
    return [_sync_request(row) for row in rows]


def get_sync_request(conn: duckdb.DuckDBPyConnection, sync_id: str) -> SyncRequestRecord | None:
    row = conn.execute(
        f"SELECT {_SYNC_REQUEST_COLUMNS} FROM patient_graph.sync_requests WHERE sync_id = ?",  # noqa: S608
        [sync_id],
    ).fetchone()
    return None if row is None else _sync_request(row)


def mark_sync_request(
    conn: duckdb.DuckDBPyConnection,
    sync_id: str,
    status: str,
    *,
    run_id: str | None = None,
    result: Any = None,
) -> bool:
    """Move a sync request to `status`; run id and result are kept unless given. Returns whether it exists.

    `started_at` is set the first time it runs, `finished_at` when it reaches success, partial or failed.
    """
    if status not in SYNC_REQUEST_STATUSES:
        raise ValueError(f"unknown sync status {status!r}; expected one of {sorted(SYNC_REQUEST_STATUSES)}")
    now = datetime.now(UTC)
    row = conn.execute(
        """
        UPDATE patient_graph.sync_requests SET
            status = $status,
            run_id = coalesce($run_id, run_id),
            result = coalesce($result::JSON, result),
            started_at = CASE WHEN $status = 'running' THEN coalesce(started_at, $now) ELSE started_at END,
            finished_at = CASE WHEN $terminal THEN $now ELSE NULL END
        WHERE sync_id = $sync_id
        RETURNING sync_id
        """,
        {
            "status": status,
            "run_id": run_id,
            "result": None if result is None else _dumps(result),
            "now": now,
            "terminal": status in _TERMINAL_SYNC_STATUSES,
            "sync_id": sync_id,
        },
    ).fetchone()
    return row is not None


@dataclass(frozen=True)
class SyncResultRecord:
    """A `sync_results` row: one patient's outcome in one run, with rows written per table and errors."""

    run_id: str
    patient_id: str
    source: str
    status: str
    start_day: date
    end_day: date
    rows: dict[str, int]
    errors: list[dict[str, Any]]
    recorded_at: datetime


_SYNC_RESULT_COLUMNS = _columns(SyncResultRecord)


def _sync_result(row: Sequence[Any]) -> SyncResultRecord:
    values = _values(SyncResultRecord, row)
    values["rows"] = _loads(values["rows"]) or {}
    values["errors"] = _loads(values["errors"]) or []
    return SyncResultRecord(**values)


def _get_sync_result(
    conn: duckdb.DuckDBPyConnection, run_id: str, patient_id: str
) -> SyncResultRecord | None:
    row = conn.execute(
        f"SELECT {_SYNC_RESULT_COLUMNS} FROM patient_graph.sync_results "  # noqa: S608
        "WHERE run_id = ? AND patient_id = ?",
        [run_id, patient_id],
    ).fetchone()
    return None if row is None else _sync_result(row)


def record_sync_result(
    conn: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    patient_id: str,
    status: str,
    start_day: date,
    end_day: date,
    rows: Mapping[str, int],
    errors: Iterable[Mapping[str, Any]],
) -> SyncResultRecord:
    """Record (or add to) a patient's result in a run, and return the merged result.

    Called again for the same run and patient, it merges: row counts per table are updated, errors not yet
    recorded are appended, and the status only gets worse (success → partial → failed).
    """
    if status not in SYNC_RESULT_STATUSES:
        raise ValueError(f"unknown sync result status {status!r}; expected one of {SYNC_RESULT_STATUSES}")
    previous = _get_sync_result(conn, run_id, patient_id)
    merged_rows = {**(previous.rows if previous else {}), **{str(k): int(v) for k, v in rows.items()}}
    merged_errors = list(previous.errors) if previous else []
    for error in errors:
        error = dict(error)
        if error not in merged_errors:
            merged_errors.append(error)
    if previous is not None:
        status = max(status, previous.status, key=SYNC_RESULT_STATUSES.index)
    conn.execute(
        f"INSERT OR REPLACE INTO patient_graph.sync_results ({_SYNC_RESULT_COLUMNS}) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            patient_id,
            SOURCE,
            status,
            _day(start_day),
            _day(end_day),
            _dumps(merged_rows),
            _dumps(merged_errors),
            datetime.now(UTC),
        ],
    )
    result = _get_sync_result(conn, run_id, patient_id)
    assert result is not None
    return result


def add_sync_result_rows(
    conn: duckdb.DuckDBPyConnection, *, run_id: str, patient_id: str, rows: Mapping[str, int]
) -> bool:
    """Add row counts (per table) to a patient's existing result in a run; False when there is none."""
    previous = _get_sync_result(conn, run_id, patient_id)
    if previous is None:
        return False
    record_sync_result(
        conn,
        run_id=run_id,
        patient_id=patient_id,
        status=previous.status,
        start_day=previous.start_day,
        end_day=previous.end_day,
        rows=rows,
        errors=[],
    )
    return True


def sync_results_for_run(conn: duckdb.DuckDBPyConnection, run_id: str) -> list[SyncResultRecord]:
    """Every patient's result in the run, by patient id."""
    rows = conn.execute(
        f"SELECT {_SYNC_RESULT_COLUMNS} FROM patient_graph.sync_results "  # noqa: S608
        "WHERE run_id = ? ORDER BY patient_id",
        [run_id],
    ).fetchall()
    return [_sync_result(row) for row in rows]


def save_oauth_state(
    conn: duckdb.DuckDBPyConnection,
    state_hash: str,
    patient_id: str,
    expires_at: datetime,
    created_at: datetime | None = None,
) -> None:
    """Remember an OAuth `state` (by its hash only: the state itself is a bearer secret) for one patient."""
    conn.execute(
        "INSERT INTO patient_graph.oauth_states (state_hash, patient_id, created_at, expires_at, used_at) "
        "VALUES (?, ?, ?, ?, NULL)",
        [state_hash, patient_id, _utc(created_at or datetime.now(UTC)), _utc(expires_at)],
    )


def consume_oauth_state(conn: duckdb.DuckDBPyConnection, state_hash: str, now: datetime) -> str | None:
    """Spend a state: its patient id once, then None; None too for an unknown or expired state."""
    row = conn.execute(
        "UPDATE patient_graph.oauth_states SET used_at = ? "
        "WHERE state_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING patient_id",
        [_utc(now), state_hash, _utc(now)],
    ).fetchone()
    return None if row is None else row[0]


def purge_oauth_states(conn: duckdb.DuckDBPyConnection, before: datetime) -> int:
    """Delete states that expired before `before` (used or not); returns how many."""
    (count,) = conn.execute(
        "DELETE FROM patient_graph.oauth_states WHERE expires_at < ?", [_utc(before)]
    ).fetchone()
    return int(count)
