"""`Warehouse`: the one door to the DuckDB file. A connection is opened under the writer lock, in UTC, on a
file at the current schema, and held only for the caller's block.

A process outside our lock holding the file (someone's DuckDB CLI) is waited for with backoff and named from
DuckDB's own message when the wait runs out. With a key (`OURA_ASSETS_WAREHOUSE_KEY`) the file is an
encrypted DuckDB database, attached through `encryption.open_encrypted`; queries read the same either way.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from oura_assets.warehouse.encryption import close_encrypted, connect_plain, open_encrypted
from oura_assets.warehouse.lock import Wait, WarehouseHolder, WriterLock, seconds
from oura_assets.warehouse.migrations import ensure_schema_on

if TYPE_CHECKING:
    from oura_assets.config import Settings

logger = logging.getLogger(__name__)

# DuckDB 1.x/2.x: 'IO Error: Could not set lock on file "…": Conflicting lock is held in /usr/bin/python3.11
# (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency'
_DUCKDB_LOCK_ERROR = "could not set lock on file"
_DUCKDB_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


class Warehouse:
    """The DuckDB file at `path`, opened only through `connect` / `transaction`; encrypted with `key`."""

    def __init__(self, path: Path | str, lock_timeout_s: float = 60.0, *, key: str | None = None):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._key = key
        self._resolved = self.path.expanduser().resolve()
        self._lock = WriterLock(self._resolved, str(self.path))

    @classmethod
    def from_settings(cls, settings: Settings, lock_timeout_s: float = 60.0) -> Warehouse:
        """The configured warehouse (`OURA_ASSETS_WAREHOUSE`), with its key (`OURA_ASSETS_WAREHOUSE_KEY`)."""
        return cls(settings.warehouse_path, lock_timeout_s, key=settings.warehouse_key)

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:
        # Never the key: only whether there is one.
        return (
            f"Warehouse({str(self.path)!r}, lock_timeout_s={self.lock_timeout_s}, encrypted={self.encrypted})"
        )

    @contextlib.contextmanager
    def connect(self, purpose: str, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection, held exclusively (across processes and threads) for the block only.

        `purpose` is shown to whoever waits, so make it say what the block does ("dagster run 1a2b3c4d:
        write wearable_data"). Waits up to `timeout_s` (default `lock_timeout_s`) and then raises
        `WarehouseBusy`. A file without the current schema gets it (created or migrated) first.
        """
        timeout = self.lock_timeout_s if timeout_s is None else timeout_s
        with self._lock.hold(purpose, timeout) as wait:
            conn = self._open(wait)
            waited = wait.waited_s()
            if waited > 1.0:
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

    @contextlib.contextmanager
    def hold(self, purpose: str, timeout_s: float | None = None) -> Iterator[None]:
        """The writer lock alone, without opening the file: for replacing the file itself (`rekey`)."""
        with self._lock.hold(purpose, self.lock_timeout_s if timeout_s is None else timeout_s):
            yield

    def _close(self, conn: duckdb.DuckDBPyConnection) -> None:
        if self._key is None:
            conn.close()
        else:
            close_encrypted(conn, self._resolved)

    def _open(self, wait: Wait) -> duckdb.DuckDBPyConnection:
        """Open DuckDB, waiting with backoff while a process outside our lock holds the file."""
        pause = 0.02
        while True:
            try:
                if self._key is not None:
                    return open_encrypted(self._resolved, self._key)
                return connect_plain(self._resolved)
            except duckdb.IOException as exc:
                if _DUCKDB_LOCK_ERROR not in str(exc).lower():
                    raise
                found = _DUCKDB_LOCK_HOLDER.search(str(exc))
                remaining = wait.deadline - time.monotonic()
                if remaining <= 0:
                    holder = WarehouseHolder(
                        pid=int(found["pid"]) if found else None,
                        purpose=f"{found['exe'] if found else 'another program'}, a DuckDB connection "
                        "outside oura_assets' lock",
                        foreign=True,
                    )
                    raise self._lock.busy(holder, wait.waited_s()) from None
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.5)
