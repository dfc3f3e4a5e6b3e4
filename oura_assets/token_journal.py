"""The token journal: a pair Oura has just handed us, durable before the process does anything that can block.

Oura spends a refresh token (or an authorization code) the moment it answers. From then on the new pair exists
only in this process until it is stored, and the warehouse write that stores it may wait minutes for the
writer lock. A process killed in that wait used to take the pair with it: the next run offered the spent
refresh token and the patient had to reconnect. So the pair is first written here, Fernet-encrypted with the
same keys as the warehouse's tokens (`TokenCipher`), to a store that needs no warehouse lock
(coordination.py): on one host a file (0600 in a 0700 directory, fsynced, renamed into place atomically, the
directory fsynced); on several hosts a row of a PostgreSQL table, committed with `synchronous_commit = on`
(coordination_postgres.py), which every host reads. Only then does the process go for the warehouse; once the
warehouse holds the pair, the entry is removed.

Two kinds of entry, named without any secret:
- `refresh-<hash of the patient id>` — a refreshed pair and the fingerprint of the refresh token it replaces.
  `tokens.PatientTokens` writes and applies it under the patient's refresh lock.
- `grant-<random id>` — a pair the API's code exchange returned, with the patient it belongs to (inside the
  ciphertext). The callback holds the entry's lock while it works; `api.service.ConnectionService.
  recover_grants` stores (or revokes) the entries whose lock nobody holds, i.e. whose callback died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from oura_assets.clock import as_utc
from oura_assets.coordination import FileJournalStore, JournalStore, Lock
from oura_assets.oura.oauth import TokenSet

log = logging.getLogger(__name__)


class Cipher(Protocol):
    """What the journal needs from `tokens.TokenCipher` (kept a Protocol: tokens.py imports this module)."""

    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, ciphertext: str | bytes) -> str: ...


class JournalUnreadable(ValueError):
    """An entry that cannot be decrypted or parsed (a key dropped from OURA_ASSETS_TOKEN_KEY, a torn copy)."""


def pair_fields(pair: TokenSet) -> dict[str, Any]:
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "expires_at": pair.expires_at.isoformat(),
        "scopes": list(pair.scopes),
    }


def pair_from(data: dict[str, Any]) -> TokenSet:
    return TokenSet(
        access_token=str(data["access_token"]),
        refresh_token=str(data["refresh_token"]),
        expires_at=as_utc(datetime.fromisoformat(data["expires_at"])),
        scopes=tuple(str(s) for s in data["scopes"]),
    )


class TokenJournal:
    """Encrypted journal entries in a store (coordination.py): a directory, or a PostgreSQL table. Raises
    OSError when the store refuses a write (a full disk, an unreachable database)."""

    def __init__(self, store: JournalStore | Path | str, cipher: Cipher) -> None:
        self.store: JournalStore = store if not isinstance(store, Path | str) else FileJournalStore(store)
        self._cipher = cipher

    def __repr__(self) -> str:
        return f"TokenJournal({self.store.describe()!r})"

    def path(self, name: str) -> Path | None:
        """Entry `name`'s file, for the file store; None for a table."""
        return self.store.path(name) if isinstance(self.store, FileJournalStore) else None

    def write(self, name: str, entry: dict[str, Any]) -> None:
        """Replace entry `name` durably: when this returns, the entry survives a kill or a power cut."""
        self.store.put(name, self._cipher.encrypt(json.dumps(entry)))

    def read(self, name: str) -> dict[str, Any] | None:
        """Entry `name`, or None; `JournalUnreadable` when it cannot be decrypted or parsed."""
        content = self.store.get(name)
        if content is None:
            return None
        try:
            data = json.loads(self._cipher.decrypt(content))
        except ValueError as exc:  # TokenDecryptError and JSONDecodeError are both ValueErrors
            raise JournalUnreadable(
                f"the token journal entry cannot be read ({type(exc).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise JournalUnreadable("the token journal entry is not an object")
        return data

    def exists(self, name: str) -> bool:
        try:
            return self.store.get(name) is not None
        except OSError:
            return False

    def remove(self, name: str) -> None:
        """Forget entry `name` (the warehouse holds its pair now, or it was revoked). Never raises."""
        try:
            self.store.delete(name)
        except OSError as exc:
            log.warning("could not remove token journal entry %s (%s)", name, type(exc).__name__)

    def names(self, prefix: str) -> list[str]:
        """Entry names starting with `prefix`, oldest first."""
        return self.store.names(prefix)

    def lock(self, name: str) -> Lock:
        """The lock an entry's owner holds while it works on the entry (grant entries)."""
        return self.store.lock(name)

    def forget_lock(self, name: str) -> None:
        self.store.forget_lock(name)


@dataclass(frozen=True, repr=False)
class GrantEntry:
    """A pair the code exchange returned for `patient_id`, and what to do with it if its callback died."""

    name: str
    patient_id: str | None
    tokens: TokenSet
    granted_at: datetime
    # "store": the callback died before answering, so the patient still expects a connection.
    # "revoke": the callback answered a failure, so the patient was told to start again.
    disposition: str

    def __repr__(self) -> str:
        return f"GrantEntry({self.name!r}, patient_id={self.patient_id!r}, disposition={self.disposition!r})"


class GrantJournal:
    """Grant entries of the connection API (one per code exchange in flight)."""

    PREFIX = "grant-"

    def __init__(self, journal: TokenJournal) -> None:
        self.journal = journal

    def new_name(self) -> str:
        return f"{self.PREFIX}{secrets.token_hex(12)}"

    def write(self, entry: GrantEntry) -> None:
        self.journal.write(
            entry.name,
            {
                "kind": "grant",
                "patient_id": entry.patient_id,
                "granted_at": entry.granted_at.isoformat(),
                "disposition": entry.disposition,
                **pair_fields(entry.tokens),
            },
        )

    def read(self, name: str) -> GrantEntry | None:
        data = self.journal.read(name)
        if data is None:
            return None
        try:
            return GrantEntry(
                name=name,
                patient_id=str(data["patient_id"]) if data.get("patient_id") else None,
                tokens=pair_from(data),
                granted_at=as_utc(datetime.fromisoformat(data["granted_at"])),
                disposition="revoke" if data.get("disposition") == "revoke" else "store",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalUnreadable(f"the grant journal entry is malformed ({type(exc).__name__})") from None

    @contextlib.contextmanager
    def held(self, name: str, *, wait: bool) -> Iterator[bool]:
        """Hold the entry's lock for the block; yields False (without waiting) if another process has it."""
        lock = self.journal.lock(name)
        try:
            got = lock.acquire(None if wait else 0)
        except OSError as exc:
            if not wait:
                raise
            # The callback's own entry, whose code Oura has already spent: the store that cannot lock cannot
            # journal either, and the callback's way out is the warehouse write, which must still happen.
            log.error("could not lock Oura grant journal entry %s (%s)", name, type(exc).__name__)
            yield True
            return
        if not got:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
            if not self.journal.exists(name):
                self.journal.forget_lock(name)

    def names(self) -> list[str]:
        return self.journal.names(self.PREFIX)
