"""The multi-host backend: the warehouse as a DuckLake (catalog in PostgreSQL, data files under a data path).

`OURA_ASSETS_WAREHOUSE=ducklake:postgres:dbname=… host=…` with `OURA_ASSETS_LAKE_DATA_PATH` (a folder, or
object storage such as `s3://bucket/oura/`) selects it. Every process of every host attaches the same
catalog. DuckLake commits optimistically: a transaction that deleted from a table another transaction changed
since it began fails at COMMIT with "Transaction conflict" (DuckDB 1.5.5's DuckLake conflicts at the table
level: two inserts never conflict, an insert and a delete on one table always do). Our writers therefore
take turns (`LakeWriter`: an advisory lock in the catalog database, across hosts), and `Warehouse.attempts`
runs a transaction that still lost (to a writer outside that lock) again.

Extensions: DuckDB's `ducklake` and `postgres` extensions come from the PyPI wheels
`duckdb-extension-ducklake` / `duckdb-extension-postgres` pinned with DuckDB (offline installs, CI), else
from DuckDB's own extension repository (`INSTALL ducklake; INSTALL postgres`, as production may do). The
postgres wheel ships its binary as `postgres.duckdb_extension`, but DuckDB names the extension after its file
and the extension calls itself `postgres_scanner`, which DuckLake asks for by that name: it is loaded through
a symlink of that name in a private (0700) folder made per process, never a shared one, since DuckDB loads
whatever binary a path names.

One in-memory DuckDB instance per process (`_LakeHost`) loads them and attaches the catalog once (loading
and attaching cost far more than a query); each `Warehouse.connect` is a cursor of it with the lake made the
default database (`USE`), so `patient_graph.x` resolves as on a DuckDB file.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from oura_assets.config import ConfigError

PREFIX = "ducklake:"
DATA_PATH_VARIABLE = "OURA_ASSETS_LAKE_DATA_PATH"
ALIAS = "oura_lake"
"""The catalog name the lake is attached under in our processes (analysts pick their own)."""

INLINING_ROW_LIMIT = 1000
"""Inserts of up to this many rows are kept in the catalog (DuckLake's data inlining) rather than written as
a Parquet file each: a nightly run writes a handful of rows per patient and table, which would otherwise be
a handful of tiny files per patient per night. `ducklake_flush_inlined_data` (the maintenance job) moves
them into files in bulk."""

_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_CONFLICT = "transaction conflict"


class LakeError(ConfigError):
    """The lake cannot be used as configured (extensions missing, catalog unreachable). One line."""


@dataclass(frozen=True)
class LakeLocation:
    """Where the lake is: its catalog (`ducklake:postgres:<libpq DSN>`) and its data path.

    No password inside the DSN: the location is shown in logs and the Dagster UI. libpq reads it from
    `PGPASSWORD` or a `~/.pgpass` file itself (`str` would show one as `***` all the same).
    """

    catalog: str
    data_path: str

    def __post_init__(self) -> None:
        if not self.catalog.startswith(PREFIX + "postgres:"):
            raise ConfigError(
                "OURA_ASSETS_WAREHOUSE: a DuckLake warehouse is `ducklake:postgres:<libpq DSN>` (PostgreSQL "
                "is the catalog that lets several hosts write; a DuckDB or SQLite catalog does not)"
            )
        if not self.data_path:
            raise ConfigError(f"{DATA_PATH_VARIABLE} is not set (needed for a DuckLake warehouse)")
        if _PASSWORD.search(self.dsn):
            # The location is shown in logs, errors and the Dagster UI's resource config: no secret in it.
            raise ConfigError(
                "OURA_ASSETS_WAREHOUSE must not carry the catalog's password (it is shown in logs and the "
                "Dagster UI): give it to libpq through PGPASSWORD or a ~/.pgpass file (PGPASSFILE) instead"
            )

    @property
    def dsn(self) -> str:
        return self.catalog[len(PREFIX + "postgres:") :]

    def __str__(self) -> str:
        return _PASSWORD.sub(r"\1***", self.catalog)

    def __repr__(self) -> str:
        return f"LakeLocation({str(self)!r}, data_path={self.data_path!r})"


def is_lake(location: object) -> bool:
    """Whether a warehouse location (`OURA_ASSETS_WAREHOUSE`'s value) names a DuckLake."""
    return isinstance(location, LakeLocation) or str(location).startswith(PREFIX)


def lake_location(location: str, data_path: str | None) -> LakeLocation:
    """`OURA_ASSETS_WAREHOUSE`'s `ducklake:…` value with `OURA_ASSETS_LAKE_DATA_PATH`, checked."""
    data = (data_path or "").strip()
    if data and "://" not in data:
        data = str(Path(data).expanduser().resolve())
    return LakeLocation(location.strip(), data)


def is_conflict(error: BaseException) -> bool:
    """Whether DuckLake refused a commit because a concurrent transaction changed what this one changed."""
    return isinstance(error, duckdb.Error) and _CONFLICT in str(error).lower()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _wheel_extension(package: str, filename: str) -> Path | None:
    """The extension binary a `duckdb-extension-*` wheel ships for this DuckDB version, if installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "extensions" / f"v{duckdb.__version__}" / filename
        if candidate.is_file():
            return candidate
    return None


_EXTENSION_DIR: Path | None = None


def _postgres_as_scanner(binary: Path) -> Path:
    """`binary` under the name `postgres_scanner.duckdb_extension`, by a symlink in a private folder."""
    global _EXTENSION_DIR
    if _EXTENSION_DIR is None or not _EXTENSION_DIR.is_dir():
        _EXTENSION_DIR = Path(tempfile.mkdtemp(prefix="oura-assets-duckdb-ext-"))  # mode 0700
        atexit.register(shutil.rmtree, _EXTENSION_DIR, True)
    link = _EXTENSION_DIR / "postgres_scanner.duckdb_extension"
    if not link.exists():
        link.symlink_to(binary)
    return link


def load_extensions(conn: duckdb.DuckDBPyConnection) -> None:
    """Load `postgres_scanner` and `ducklake` into `conn`'s instance: the wheels' binaries, else DuckDB's."""
    loaded = {
        name
        for (name,) in conn.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded "
            "AND extension_name IN ('ducklake', 'postgres_scanner')"
        ).fetchall()
    }
    wheels = {
        "postgres_scanner": ("duckdb_extension_postgres", "postgres.duckdb_extension", "postgres"),
        "ducklake": ("duckdb_extension_ducklake", "ducklake.duckdb_extension", "ducklake"),
    }
    for name, (package, filename, repository_name) in wheels.items():
        if name in loaded:
            continue
        binary = _wheel_extension(package, filename)
        try:
            if binary is not None:
                path = _postgres_as_scanner(binary) if name == "postgres_scanner" else binary
                conn.execute(f"LOAD {_literal(str(path))}")
            else:
                conn.execute(f"LOAD {repository_name}")
        except duckdb.Error as exc:
            raise LakeError(
                f"the DuckLake warehouse needs DuckDB's {repository_name} extension: pip install "
                f"'duckdb-extension-{repository_name}=={duckdb.__version__}', or run INSTALL "
                f"{repository_name} once in DuckDB ({str(exc).splitlines()[0]})"
            ) from None


def attach_lake(
    conn: duckdb.DuckDBPyConnection, location: LakeLocation, alias: str = ALIAS, *, read_only: bool = False
) -> None:
    """ATTACH the lake to `conn`'s instance as `alias` (created, with its data path, if new)."""
    load_extensions(conn)
    options = [f"DATA_PATH {_literal(location.data_path)}", f"DATA_INLINING_ROW_LIMIT {INLINING_ROW_LIMIT}"]
    if read_only:
        options.append("READ_ONLY")
    if "://" not in location.data_path:
        Path(location.data_path).mkdir(parents=True, exist_ok=True)
    try:
        # ATTACH takes no parameters: the catalog is a literal (it carries no password, see LakeLocation).
        conn.execute(f'ATTACH {_literal(location.catalog)} AS "{alias}" ({", ".join(options)})')
    except duckdb.Error as exc:
        message = _PASSWORD.sub(r"\1***", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise LakeError(f"could not attach the DuckLake warehouse {location}: {message}") from None


class _LakeHost:
    """This process's DuckDB instance with the extensions loaded and each lake it uses attached once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._pid = 0
        self._attached: dict[LakeLocation, str] = {}
        self._current: set[LakeLocation] = set()

    def cursor(self, location: LakeLocation) -> duckdb.DuckDBPyConnection:
        """A new connection to the instance whose default database is the lake."""
        with self._lock:
            # A forked child must not share its parent's DuckDB instance: it gets its own.
            if self._conn is None or self._pid != os.getpid():
                self._conn, self._pid, self._attached = duckdb.connect(), os.getpid(), {}
                self._current = set()
            alias = self._attached.get(location)
            if alias is None:
                alias = ALIAS if not self._attached else f"{ALIAS}_{len(self._attached)}"
                attach_lake(self._conn, location, alias)
                self._attached[location] = alias
            cursor = self._conn.cursor()
        cursor.execute(f'USE "{alias}"')
        return cursor

    def alias(self, location: LakeLocation) -> str:
        return self._attached[location]

    def schema_current(self, location: LakeLocation) -> bool:
        """Whether this process's attachment of the lake was already seen at the current schema version."""
        with self._lock:
            return self._pid == os.getpid() and location in self._current

    def mark_schema_current(self, location: LakeLocation) -> None:
        with self._lock:
            if self._pid == os.getpid() and location in self._attached:
                self._current.add(location)


_HOST = _LakeHost()


class LakeWriter:
    """The turn to write one lake: held by one transaction at a time in every process of every host.

    DuckLake 1.5.5 settles concurrent writers optimistically and per table: a transaction that deleted from a
    table another one changed since it began fails at COMMIT and is run again (`Warehouse.attempts`). Every
    write of ours touches the same few tables (sync results, the raw tables, the per-table write guards), so
    concurrent writers (three shard runs) nearly always collide: measured, one shard's patient lost its commit
    eleven times in a row, and a shard run took 47 s against 12 s for the others, redoing whole transactions.
    Taking turns costs a transaction's length of waiting instead (our transactions are short: a group of
    patients' rows, never a call to Oura), so writers take turns as on the DuckDB file:

    - the threads of this process on a reentrant lock (a transaction may open another in the same thread);
    - the processes of every host on a PostgreSQL session-level advisory lock in the lake's own catalog
      database, taken by the outermost transaction of the thread holding the process's turn. The server
      lets go when the holder's session ends, so a process killed -9 never leaves the lake locked.

    DuckLake's conflict check still guards what does not take the turn (another program writing the lake);
    `attempts` still runs such a loser again. Made per process (a forked child gets its own session).
    """

    def __init__(self, location: LakeLocation) -> None:
        from oura_assets.coordination_postgres import session_lock

        self._threads = threading.RLock()
        self._depth = 0  # how many transactions of the thread holding `_threads` are open; changed under it
        self._hosts = session_lock(
            location.dsn,
            f"lake writer:{location.catalog}",
            role="the DuckLake catalog database",
            application="oura-assets lake writer",
        )

    def acquire(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the turn (both locks, in all); False when it was not had in time."""
        started = time.monotonic()
        if not self._threads.acquire(timeout=max(timeout_s, 0.0)):
            return False
        if self._depth == 0:
            try:
                got = self._hosts.acquire(max(timeout_s - (time.monotonic() - started), 0.0))
            except BaseException:
                self._threads.release()
                raise
            if not got:
                self._threads.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._hosts.release()
        self._threads.release()


_WRITERS: dict[tuple[int, LakeLocation], LakeWriter] = {}
_WRITERS_LOCK = threading.Lock()


def lake_writer(location: LakeLocation) -> LakeWriter:
    """This process's `LakeWriter` of the lake at `location`."""
    with _WRITERS_LOCK:
        key = (os.getpid(), location)
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = LakeWriter(location)
        return writer


def lake_cursor(location: LakeLocation) -> duckdb.DuckDBPyConnection:
    """A read-write connection whose default database is the lake at `location` (close it when done)."""
    return _HOST.cursor(location)


def lake_schema_checked(location: LakeLocation) -> bool:
    """Whether this process already found (or made) the lake's schema current, so a connection need not read
    `main.schema_version` again.

    On a DuckDB file that read is ~0.2 ms and is done on every connection; on a DuckLake it is a catalog round
    trip to PostgreSQL (snapshot, table, inlined rows: 25-40 ms measured on a 2-core host), paid by every
    connection a run opens (a ~100 of them for a few patients and days, far more per night). A schema version
    only ever goes up, and a process attaches a lake once for its lifetime (`_LakeHost`), so once seen current
    it stays current for this attachment."""
    return _HOST.schema_current(location)


def mark_lake_schema_checked(location: LakeLocation) -> None:
    """Note that the lake's schema was found (or made) current through this process's attachment."""
    _HOST.mark_schema_current(location)


def is_lake_connection(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether `conn`'s default database is a DuckLake (the writers pick their SQL by it)."""
    row = conn.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row is not None and row[0] == "ducklake"
