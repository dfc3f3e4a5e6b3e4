"""Encryption at rest for our DuckDB files (the warehouse and the analytics snapshot), keyed by
`OURA_ASSETS_WAREHOUSE_KEY`.

DuckDB encrypts a database file (AES-GCM, every block and the WAL) when it is attached with
`ENCRYPTION_KEY`. Writing one needs OpenSSL, which DuckDB takes from its httpfs extension: without it,
DuckDB 1.5 loads a read-only crypto module and refuses to write. So a writer loads httpfs first: the PyPI
wheel `duckdb-extension-httpfs` when installed (offline, pinned with DuckDB in pyproject.toml), else
`LOAD httpfs` from DuckDB's own extension directory (`INSTALL httpfs` once, as production does). Readers
(`read_only=True`) decrypt without it.

Loading httpfs costs about half a second per DuckDB instance, far more than opening the file, and even a
plain new instance costs ~10 ms of CPU (DuckDB fills its function catalog), against ~2 ms to ATTACH a file to
a live one. So the warehouse's connections, encrypted or not, share one in-memory DuckDB instance per process
(`_Host`, httpfs loaded the first time a key needs it); each connection is a cursor of it with the file
ATTACHed and made the default database (`USE`), so every query's `patient_graph.x` / `oura_raw.x` /
`main.x` names resolve in the file as they do on a plain connection. The file is DETACHed (checkpointed and
closed, which releases DuckDB's own file lock) when the last connection to it in this process closes, as a
plain `duckdb.connect` would close it: the file is held open exactly as long as before.

The key never appears in a log line, an error message or an exception chain: DuckDB's errors are mapped to
`WarehouseKeyError` messages that name the file and the variable, never the value.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import duckdb

from oura_assets.config import ConfigError

KEY_VARIABLE = "OURA_ASSETS_WAREHOUSE_KEY"
_WHEEL_PACKAGE = "duckdb_extension_httpfs"


class WarehouseKeyError(ConfigError):
    """An encrypted file without its key, with the wrong key, or a key for a plain file. One line, no key."""


class NotEncrypted(WarehouseKeyError):
    """A key was given for a file that is not encrypted (`oura-assets warehouse rekey` encrypts it)."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def alias_for(path: Path | str) -> str:
    """The catalog name a file is attached under: stable per file, distinct between files."""
    resolved = str(Path(path).expanduser().resolve())
    return "warehouse_" + hashlib.sha256(resolved.encode()).hexdigest()[:10]


def httpfs_wheel_file() -> Path | None:
    """The httpfs extension shipped by the `duckdb-extension-httpfs` wheel for this DuckDB, if installed."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
        if candidate.is_file():
            return candidate
    return None


def load_crypto(conn: duckdb.DuckDBPyConnection) -> None:
    """Let `conn`'s DuckDB instance write encrypted files: load httpfs (the wheel's, else DuckDB's)."""
    loaded = conn.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()
    if loaded and loaded[0]:
        return
    wheel = httpfs_wheel_file()
    if wheel is not None:
        conn.execute(f"LOAD {_literal(str(wheel))}")
        return
    try:
        conn.execute("LOAD httpfs")
    except duckdb.Error:
        raise WarehouseKeyError(
            f"writing an encrypted DuckDB file needs the httpfs extension: pip install "
            f"'duckdb-extension-httpfs=={duckdb.__version__}', or run INSTALL httpfs once in DuckDB"
        ) from None


def attach(
    conn: duckdb.DuckDBPyConnection,
    path: Path | str,
    alias: str,
    key: str | None,
    *,
    read_only: bool = False,
    options: Mapping[str, str] | None = None,
) -> None:
    """ATTACH the DuckDB file `path` to `conn` as `alias`, encrypted with `key` (plain when `key` is None).

    For the snapshot builder and `rekey`: attach a new or existing file beside the warehouse on a connection
    the warehouse gave you, e.g. `attach(conn, target, "analytics_snapshot", settings.warehouse_key,
    options={"STORAGE_VERSION": "v1.5.0"})`, then DETACH it when done. A wrong or missing key raises
    `WarehouseKeyError`; DuckDB's lock conflict (another process has the file) is raised as DuckDB's own
    IOException, for the caller's wait loop.
    """
    parts = [f"{name} {_literal(value)}" for name, value in (options or {}).items()]
    params: list[str] = []
    if key is not None:
        if not read_only:
            load_crypto(conn)
        # A parameter, never SQL text: the key cannot surface in a parser error or a query log.
        parts.append("ENCRYPTION_KEY ?")
        params.append(key)
    if read_only:
        parts.append("READ_ONLY")
    clause = f" ({', '.join(parts)})" if parts else ""
    try:
        conn.execute(f"ATTACH {_literal(str(path))} AS {_identifier(alias)}{clause}", params)
    except duckdb.IOException as exc:
        if key is not None and key in str(exc):
            raise WarehouseKeyError(f"could not open {path}: {_redact(str(exc), key)}") from None
        raise
    except duckdb.Error as exc:
        raise _key_error(path, key, exc) from None


def _redact(message: str, key: str) -> str:
    return message.replace(key, "***").splitlines()[0] if message else message


def _key_error(path: Path | str, key: str | None, exc: duckdb.Error) -> Exception:
    """DuckDB's answer to a failed ATTACH as one line that names the file and the variable, never the key."""
    message = str(exc)
    lowered = message.lower()
    if "without a key" in lowered:
        return WarehouseKeyError(f"{path} is encrypted: set {KEY_VARIABLE} to its key")
    if "wrong encryption key" in lowered:
        return WarehouseKeyError(f"{KEY_VARIABLE} is not the key of {path} (wrong key)")
    if "is not encrypted" in lowered:
        return NotEncrypted(
            f"{path} is not encrypted but {KEY_VARIABLE} is set: encrypt it with `oura-assets warehouse "
            f"rekey`, or unset {KEY_VARIABLE}"
        )
    if "read-only crypto module" in lowered:
        return WarehouseKeyError(
            f"writing the encrypted file {path} needs the httpfs extension: pip install "
            f"'duckdb-extension-httpfs=={duckdb.__version__}', or run INSTALL httpfs once in DuckDB"
        )
    if key is not None and key in message:
        return WarehouseKeyError(f"could not open {path}: {_redact(message, key)}")
    return exc


def is_encrypted(path: Path | str) -> bool:
    """Whether the DuckDB file `path` is encrypted (probed read-only, without a key or our writer lock)."""
    conn = duckdb.connect()
    try:
        conn.execute(f"ATTACH {_literal(str(path))} AS probe (READ_ONLY)")
    except duckdb.CatalogException as exc:
        if "without a key" in str(exc).lower():
            return True
        raise
    finally:
        conn.close()
    return False


def connect_plain(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect(path)` for a file opened without a key; an encrypted one is a `WarehouseKeyError`."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException:
        raise
    except duckdb.Error as exc:
        raise _key_error(path, None, exc) from None


class _Host:
    """This process's in-memory DuckDB instance (httpfs loaded once a key needs it), and the files attached
    to it.

    A file stays attached while any connection to it is open (nested `Warehouse.connect` blocks in one
    thread share it); the last one to close detaches it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._pid = 0
        self._users: dict[str, int] = {}
        self._narrowed = 0  # blocks inside `single_threaded`, in any thread
        self._threads: int | None = None  # the instance's setting to restore when the last one leaves

    def _instance(self) -> duckdb.DuckDBPyConnection:
        # A forked child must not share its parent's DuckDB instance: it gets its own. The inherited one stays
        # referenced, never freed here: its worker threads live only in the parent, and closing it in the
        # child would wait for them.
        if self._conn is None or self._pid != os.getpid():
            if self._conn is not None:
                _INHERITED.append(self._conn)
            conn = duckdb.connect()
            self._conn, self._pid, self._users = conn, os.getpid(), {}
            self._narrowed, self._threads = 0, None
        return self._conn

    @contextlib.contextmanager
    def single_threaded(self) -> Iterator[None]:
        with self._lock:
            instance = self._instance()
            if self._narrowed == 0:
                with instance.cursor() as cursor:
                    (threads,) = cursor.execute("SELECT current_setting('threads')").fetchone()  # type: ignore[misc]
                    cursor.execute("SET threads = 1")
                self._threads = int(threads)
            self._narrowed += 1
            pid = self._pid
        try:
            yield
        finally:
            with self._lock:
                if self._pid == pid and self._conn is not None:
                    self._narrowed -= 1
                    if self._narrowed == 0 and self._threads is not None:
                        with self._conn.cursor() as cursor:
                            cursor.execute(f"SET threads = {self._threads}")

    def open(self, path: Path, key: str | None) -> duckdb.DuckDBPyConnection:
        alias = alias_for(path)
        with self._lock:
            instance = self._instance()
            if self._users.get(alias, 0) == 0:
                attach(instance, path, alias, key)
                # Spill where `duckdb.connect(path)` would (`<file>.tmp`), not into the working directory
                # (an in-memory instance's default). DuckDB refuses the switch while it has spilled there.
                with contextlib.suppress(duckdb.Error):
                    instance.execute(f"SET temp_directory = {_literal(f'{path}.tmp')}")
            self._users[alias] = self._users.get(alias, 0) + 1
            cursor = instance.cursor()
        try:
            cursor.execute(f"USE {_identifier(alias)}")
        except BaseException:
            cursor.close()
            self.release(path)
            raise
        return cursor

    def release(self, path: Path) -> None:
        alias = alias_for(path)
        with self._lock:
            remaining = self._users.get(alias, 0) - 1
            if remaining > 0:
                self._users[alias] = remaining
                return
            self._users.pop(alias, None)
            if self._conn is None or self._pid != os.getpid():
                return
            with self._conn.cursor() as cursor:
                cursor.execute(f"DETACH DATABASE IF EXISTS {_identifier(alias)}")


_HOST = _Host()
_INHERITED: list[duckdb.DuckDBPyConnection] = []


def _forget_host_lock() -> None:
    """A forked child must not inherit `_HOST`'s lock held by a thread of the parent it lacks."""
    _HOST._lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_host_lock)


def open_attached(path: Path | str, key: str | None) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the file `path` (created if missing; encrypted with `key` unless None), as
    its default database, on the process's shared DuckDB instance.

    Close it with `close_attached(conn, path)` (the file is detached when its last connection closes).
    `Warehouse` does this under its writer lock; prefer `open_database` anywhere else.
    """
    return _HOST.open(Path(path).expanduser().resolve(), key)


def single_threaded() -> AbstractContextManager[None]:
    """The process's shared instance at one DuckDB thread for the block (restored when the last such block
    in any thread leaves), for the run's writer thread (`GroupWriter`).

    Why: the writer inserts Arrow columns handed over by the fetch threads, which parse beside it on the
    same cores. Measured on a 2-core host, DuckDB's default two threads spent about twice the CPU of one on
    the same insert, commit and checkpoint, and were no faster by wall time: in a profile, while a DuckDB
    worker ran a task the calling thread kept polling for the next one and taking the GIL (the Python
    client checks for signals between tasks), against four fetch threads that want it too. The setting is the
    instance's, so other queries of this process that run meanwhile run on one thread too: slower, never
    wrong.
    """
    return _HOST.single_threaded()


def close_attached(conn: duckdb.DuckDBPyConnection, path: Path | str) -> None:
    """Close a connection from `open_attached` (rolling back what it left open) and detach when last."""
    try:
        conn.close()
    finally:
        _HOST.release(Path(path).expanduser().resolve())


@contextlib.contextmanager
def open_database(
    path: Path | str, key: str | None, *, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the DuckDB file `path` whose default database is that file, for the block.

    With `key` None this is `duckdb.connect(path, read_only=...)`. With a key the file is encrypted (a new
    one is created encrypted): read-write connections share the process's httpfs-enabled instance, read-only
    ones get their own small instance and need no httpfs. This does not take the warehouse's writer lock:
    use it for files the pipeline does not write concurrently (the analytics snapshot, a copy) or read-only.
    """
    path = Path(path).expanduser().resolve()
    if key is None:
        conn = connect_plain(path, read_only=read_only)
        try:
            yield conn
        finally:
            conn.close()
        return
    if not read_only:
        conn = open_attached(path, key)
        try:
            yield conn
        finally:
            close_attached(conn, path)
        return
    conn = duckdb.connect()
    try:
        alias = alias_for(path)
        attach(conn, path, alias, key, read_only=True)
        conn.execute(f"USE {_identifier(alias)}")
        yield conn
    finally:
        conn.close()
