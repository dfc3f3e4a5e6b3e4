"""Changing the warehouse's encryption key, or encrypting a plain warehouse: copy, verify, swap.

DuckDB cannot re-encrypt a file in place, so the warehouse is copied (`COPY FROM DATABASE`: schemas, tables
with their keys, views, sequences, data) into a new file beside it encrypted with the new key, the copy's
row counts are checked against the source's, and the new file replaces the old one with one atomic rename.
All of it happens under the writer lock, so no run or API request writes in between; a crash before the
rename leaves the old file untouched (the half-made copy is removed by the next attempt).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from oura_assets.private_files import fsync_directory
from oura_assets.warehouse.database import Warehouse
from oura_assets.warehouse.encryption import NotEncrypted, WarehouseKeyError, attach, load_crypto

_SOURCE = "rekey_source"
_TARGET = "rekey_target"


@dataclass(frozen=True)
class RekeyResult:
    tables: int
    rows: int
    was_encrypted: bool
    seconds: float


def _table_rows(conn: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    tables = conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY ALL", [catalog]
    ).fetchall()
    return {
        f"{schema}.{table}": conn.execute(
            f'SELECT count(*) FROM "{catalog}"."{schema}"."{table}"'  # noqa: S608 (names from the catalog)
        ).fetchone()[0]
        for schema, table in tables
    }


def _remove_copy(target: Path) -> None:
    for leftover in (target, target.with_name(target.name + ".wal")):
        leftover.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _attach_source(conn: duckdb.DuckDBPyConnection, path: Path, key: str | None) -> bool:
    """Attach the current file read-write (so its WAL is checkpointed); True when it was encrypted."""
    if key is None:
        attach(conn, path, _SOURCE, None)
        return False
    try:
        attach(conn, path, _SOURCE, key)
        return True
    except NotEncrypted:
        attach(conn, path, _SOURCE, None)
        return False


def rekey(
    warehouse: Warehouse, current_key: str | None, new_key: str, timeout_s: float | None = None
) -> RekeyResult:
    """Re-encrypt `warehouse` with `new_key`; `current_key` opens it (None or a plain file: encrypt it).

    Stop nothing first: the writer lock makes runs and requests wait. Processes still configured with the
    old key get a one-line `WarehouseKeyError` until they are given the new one.
    """
    began = time.monotonic()
    path = warehouse.path.expanduser().resolve()
    target = path.with_name(f".{path.name}.rekey")
    with warehouse.hold("rekey: copying into a new encrypted file", timeout_s):
        if not path.exists():
            raise WarehouseKeyError(f"no warehouse at {path} to rekey")
        _remove_copy(target)
        conn = duckdb.connect()
        try:
            load_crypto(conn)
            was_encrypted = _attach_source(conn, path, current_key)
            conn.execute(f"CHECKPOINT {_SOURCE}")
            attach(conn, target, _TARGET, new_key)
            conn.execute(f"COPY FROM DATABASE {_SOURCE} TO {_TARGET}")
            expected, copied = _table_rows(conn, _SOURCE), _table_rows(conn, _TARGET)
            if copied != expected:
                raise RuntimeError(f"rekey: the copy of {path} does not match it; the warehouse is unchanged")
            conn.execute(f"DETACH {_TARGET}")
            conn.execute(f"DETACH {_SOURCE}")
        except BaseException:
            conn.close()
            _remove_copy(target)
            raise
        conn.close()
        if path.with_name(path.name + ".wal").exists():
            _remove_copy(target)
            raise RuntimeError(f"rekey: {path} still has a write-ahead log after its checkpoint; unchanged")
        os.chmod(target, stat.S_IMODE(path.stat().st_mode))
        _fsync_file(target)
        os.replace(target, path)
        fsync_directory(path.parent)
    return RekeyResult(
        tables=len(copied),
        rows=sum(copied.values()),
        was_encrypted=was_encrypted,
        seconds=time.monotonic() - began,
    )
