"""Where the processes that touch Oura tokens coordinate: the per-patient refresh lock and the token journal.

Oura's refresh tokens are single use (tokens.py), so every process that may refresh a patient must queue on
one lock, and a pair Oura returned must be durable where the next process to use the patient will look.
Two backends, chosen by `Settings.coordination` (config.py, `OURA_ASSETS_COORDINATION`):

- files (the default, one host): the lock is a `filelock` under `Settings.lock_dir`, the journal a directory
  of encrypted files (`Settings.token_journal_dir`, 0700, entries 0600, fsynced). Both hold between the
  processes of one host only.
- PostgreSQL (several hosts: Kubernetes pods, Docker Compose workers; coordination_postgres.py): the lock is
  a session-level advisory lock, the journal a table of ciphertext rows. Every host that names the database
  shares them, and a pair journaled by a pod outlives the pod.

Locks and entries are named by hashes and random ids, never by a patient id (a personal identifier); what an
entry holds is Fernet ciphertext (`tokens.TokenCipher`), whichever backend keeps it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import filelock

from oura_assets.private_files import fsync_directory, write_private

if TYPE_CHECKING:
    from oura_assets.config import Settings

SUFFIX = ".journal"


class CoordinationUnavailable(OSError):
    """The coordination store cannot be reached or refused a write. An OSError, as a full disk is for the
    file backend: callers treat "the journal could not be written" alike. The message names the server,
    never the connection string."""


class Lock(Protocol):
    """A lock one holder at a time, across processes (and, with PostgreSQL, hosts)."""

    def acquire(self, timeout_s: float | None) -> bool:
        """Wait up to `timeout_s` (None: as long as it takes, 0: not at all); False when it was not had."""
        ...

    def release(self) -> None: ...


class JournalStore(Protocol):
    """Where encrypted journal entries live: opaque ciphertext by name (token_journal.py encrypts)."""

    def put(self, name: str, ciphertext: str) -> None:
        """Store durably: when this returns, the entry survives a kill of this process (or of its host)."""
        ...

    def get(self, name: str) -> str | None: ...

    def delete(self, name: str) -> None: ...

    def names(self, prefix: str) -> list[str]:
        """Entry names starting with `prefix`, oldest first."""
        ...

    def lock(self, name: str) -> Lock:
        """The lock an entry's owner holds while it works on the entry (a callback still alive)."""
        ...

    def forget_lock(self, name: str) -> None:
        """Clean up after an entry's lock once the entry is gone (files leave a lock file behind)."""
        ...

    def describe(self) -> str: ...


class Coordination(Protocol):
    def refresh_lock(self, name: str) -> Lock:
        """The refresh lock `name` (`oura-tokens-<hash of the patient id>`)."""
        ...

    def journal_store(self) -> JournalStore: ...


class FileLock:
    """`filelock` behind the `Lock` interface. Not thread-local: a grant's lock may be let go by another
    thread than the one that took it (the API runs each request in a worker thread)."""

    def __init__(self, path: Path, *, directory_mode: int = 0o777) -> None:
        self.path = path
        self._directory_mode = directory_mode
        self._lock = filelock.FileLock(path, thread_local=False)

    def acquire(self, timeout_s: float | None) -> bool:
        self.path.parent.mkdir(mode=self._directory_mode, parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


class FileJournalStore:
    """A directory of entries, one file each (`<name>.journal`), written by `private_files.write_private`:
    0600 from creation, fsynced, renamed into place, directory fsynced."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileJournalStore({str(self.directory)!r})"

    def describe(self) -> str:
        return str(self.directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}{SUFFIX}"

    def put(self, name: str, ciphertext: str) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path(name), ciphertext)

    def get(self, name: str) -> str | None:
        try:
            return self.path(name).read_text()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
        fsync_directory(self.directory)

    def names(self, prefix: str) -> list[str]:
        try:
            found = [p for p in self.directory.glob(f"{prefix}*{SUFFIX}") if p.is_file()]
        except OSError:
            return []
        found.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0.0)
        return [p.name[: -len(SUFFIX)] for p in found]

    def lock(self, name: str) -> Lock:
        return FileLock(self.directory / f"{name}.lock", directory_mode=0o700)

    def forget_lock(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.directory / f"{name}.lock").unlink()


class FileCoordination:
    """One host: lock files under `lock_dir`, journal files under `journal_dir`."""

    def __init__(self, lock_dir: Path | str, journal_dir: Path | str) -> None:
        self.lock_dir = Path(lock_dir)
        self.journal_dir = Path(journal_dir)

    def __repr__(self) -> str:
        return f"FileCoordination({str(self.lock_dir)!r}, {str(self.journal_dir)!r})"

    def refresh_lock(self, name: str) -> Lock:
        return FileLock(self.lock_dir / f"{name}.lock")

    def journal_store(self) -> FileJournalStore:
        return FileJournalStore(self.journal_dir)


_SHARED: dict[tuple[int, str], Coordination] = {}
_SHARED_LOCK = threading.Lock()


def from_settings(settings: Settings) -> Coordination:
    """The configured backend. The PostgreSQL one is shared by every caller in this process (one small pool
    of connections per database, not one per patient), and made anew in a forked child."""
    dsn = settings.coordination
    if dsn is None:
        return FileCoordination(settings.lock_dir, settings.token_journal_dir)
    from oura_assets.coordination_postgres import PostgresCoordination

    key = (os.getpid(), dsn)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = PostgresCoordination(dsn)
        return found
