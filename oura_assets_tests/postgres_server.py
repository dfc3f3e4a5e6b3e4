"""A real, throwaway PostgreSQL server for the tests that need one (Dagster's instance storage, the DuckLake
catalog, the shared Oura budget when deployed on many hosts).

Not a mock: Debian's `postgresql` binaries (`initdb`, `pg_ctl`, `psql`) start a private cluster in a temporary
directory, listening on 127.0.0.1 on a free port, with `trust` authentication for its one role and durability
switched off (fsync, synchronous commit, full-page writes: a crash loses a test's data, nothing else).
`make test` installs the package when it is missing (`scripts/ensure-postgres`).

PostgreSQL refuses to run as root, so under root (CI, this machine) the cluster belongs to the `postgres`
system user that the Debian package creates, and its directory is made outside pytest's root-only temp tree.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROLE = "oura"
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` package "
    "(`make test` does it through scripts/ensure-postgres when run as root)"
)


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: connect as `user` over TCP to `host:port` (no password)."""

    host: str
    port: int
    user: str
    bin_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq key/value form, as DuckDB's postgres extension and DuckLake's catalog take it."""
        return f"dbname={dbname} host={self.host} port={self.port} user={self.user}"

    def url(self, dbname: str = "postgres") -> str:
        """URL form, as dagster-postgres and SQLAlchemy take it."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through `psql` and return its unaligned output (no driver needed in the test process)."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database (names: lowercase letters, digits, underscores), empty or a copy of `template`
        (a database nobody is connected to), and return its DSN."""
        for given in (name, template or "x"):
            if not given.replace("_", "").isalnum() or given.lower() != given:
                raise ValueError(f"database name must be lowercase alphanumeric/underscore: {given!r}")
        self.psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.dsn(name)


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps them versioned)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(MISSING)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private cluster, yield it, and stop and delete it afterwards (also when the test fails)."""
    bin_dir = find_bin_dir()
    owner = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root and no `postgres` user to own the test cluster") from exc
        owner = "postgres"
    base = Path(tempfile.mkdtemp(prefix="oura-pg-"))
    data_dir = base / "data"
    log_file = base / "server.log"
    if owner:
        shutil.chown(base, user=owner, group=owner)
    port = _free_port()
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            owner,
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = (
        f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=200"
    )
    started = subprocess.run(
        _as_owner(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data_dir),
                "-o",
                options,
                "-l",
                str(log_file),
                "-w",
                "-t",
                "60",
                "start",
            ],
            owner,
        ),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    try:
        if started.returncode != 0:
            log = log_file.read_text() if log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{log[-2000:]}")
        yield PostgresServer(host="127.0.0.1", port=port, user=ROLE, bin_dir=bin_dir)
    finally:
        subprocess.run(
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"], owner),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)
