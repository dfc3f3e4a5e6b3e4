"""The simulator's OAuth grant records, keyed by token digests, and their optional file on disk.

Real Oura remembers a grant across its own restarts; a simulator that forgot them would send every patient
of `make demo` to `reconnect_required` as soon as `make simulator` replaced the demo's in-process instance. So
the grant tables can be written to a file (`SimulatorConfig.state_path`) on every change and read at start-up.

The simulator only ever has to recognise a token or code that a client presents (valid, expired, rotated,
revoked, already spent), never to show it again, so the tables are keyed by its SHA-256 and the plaintext is
neither kept in memory nor written out. The values are 192 or 256 random bits, so an unsalted hash cannot be
inverted by guessing.

One process owns the file at a time (a later one takes over when the earlier has stopped); writes replace the
whole file atomically (`private_files.write_private`: temporary file, fsync, rename; mode 0600), so a reader
never sees half a file. A file that cannot be read or understood is not fatal: the simulator starts without
grants and says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oura_assets.private_files import write_private

log = logging.getLogger(__name__)

# Bumped when the layout changes; a file of another version is treated like an unreadable one.
FORMAT_VERSION = 1


def digest(secret: str) -> str:
    """The key a token or code is stored and looked up under."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass
class Grant:
    """One user's consent to one client; its current access/refresh pair dies with it."""

    grant_id: str
    user: str
    client_id: str
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclass
class AccessToken:
    grant_id: str
    expires_at: float
    serial: int
    # Why the token stopped working before its expiry ("rotated", "revoked"); None while it is live.
    dead: str | None = None


@dataclass
class RefreshToken:
    grant_id: str
    # Digest of the access token issued together with this refresh token (rotation kills it).
    access_digest: str
    spent: bool = False


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    user: str
    scopes: tuple[str, ...]
    expires_at: float
    used: bool = False
    grant_id: str | None = None


@dataclass
class GrantTables:
    """Every grant, token and code the simulator has issued, keyed by `digest()` of the secret.

    Spent and expired entries are kept on purpose: a spent refresh token must still answer `invalid_grant`
    (and be counted as reuse) and a replayed code must still revoke its grant. A demo issues a handful, and a
    refresh adds one pair per access-token lifetime, so the tables stay small.
    """

    grants: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    refresh: dict[str, RefreshToken] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    # The serial of the newest access token; the `expire_access_tokens` fault compares against it.
    serial: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "serial": self.serial,
            "grants": {
                key: {
                    "user": g.user,
                    "client_id": g.client_id,
                    "scopes": list(g.scopes),
                    "revoked": g.revoked,
                }
                for key, g in self.grants.items()
            },
            "access_tokens": {
                key: {"grant_id": t.grant_id, "expires_at": t.expires_at, "serial": t.serial, "dead": t.dead}
                for key, t in self.access.items()
            },
            "refresh_tokens": {
                key: {"grant_id": t.grant_id, "access_digest": t.access_digest, "spent": t.spent}
                for key, t in self.refresh.items()
            },
            "codes": {
                key: {
                    "client_id": c.client_id,
                    "redirect_uri": c.redirect_uri,
                    "user": c.user,
                    "scopes": list(c.scopes),
                    "expires_at": c.expires_at,
                    "used": c.used,
                    "grant_id": c.grant_id,
                }
                for key, c in self.codes.items()
            },
        }

    @classmethod
    def from_json(cls, raw: Any) -> GrantTables:
        """Rebuilds the tables; raises ValueError, KeyError or TypeError on what `to_json` did not write."""
        if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} simulator state")
        # Explicit field-by-field reads (not `**entry`) so a stray or missing key fails here, at load time,
        # rather than as a wrong answer to some later request.
        return cls(
            grants={
                _str(key): Grant(
                    _str(key),
                    _str(g["user"]),
                    _str(g["client_id"]),
                    _scopes(g["scopes"]),
                    _bool(g["revoked"]),
                )
                for key, g in _table(raw, "grants")
            },
            access={
                _str(key): AccessToken(
                    _str(t["grant_id"]), _number(t["expires_at"]), _int(t["serial"]), _optional(t["dead"])
                )
                for key, t in _table(raw, "access_tokens")
            },
            refresh={
                _str(key): RefreshToken(_str(t["grant_id"]), _str(t["access_digest"]), _bool(t["spent"]))
                for key, t in _table(raw, "refresh_tokens")
            },
            codes={
                _str(key): AuthCode(
                    _str(c["client_id"]),
                    _str(c["redirect_uri"]),
                    _str(c["user"]),
                    _scopes(c["scopes"]),
                    _number(c["expires_at"]),
                    _bool(c["used"]),
                    _optional(c["grant_id"]),
                )
                for key, c in _table(raw, "codes")
            },
            serial=_int(raw["serial"]),
        )


def load_tables(path: Path) -> GrantTables:
    """The tables saved at `path`; empty when there is no file yet or it cannot be used (with one warning)."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return GrantTables()
    except (OSError, ValueError) as exc:
        _warn_unusable(path, exc)
        return GrantTables()
    try:
        return GrantTables.from_json(raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        _warn_unusable(path, exc)
        return GrantTables()


def save_tables(path: Path, tables: GrantTables) -> None:
    """Replace `path` with `tables` atomically, mode 0600."""
    write_private(path, json.dumps(tables.to_json(), separators=(",", ":"), sort_keys=True))


def _warn_unusable(path: Path, exc: BaseException) -> None:
    # The reason is the exception's type and message: JSON and validation errors never quote token values,
    # because the file holds none.
    log.warning(
        "Oura simulator: the state file %s cannot be used (%s: %s); starting with no grants, so earlier "
        "tokens are unknown and their patients must reconnect",
        path,
        type(exc).__name__,
        exc,
    )


def _table(raw: dict[str, Any], name: str) -> list[tuple[Any, Any]]:
    table = raw[name]
    if not isinstance(table, dict) or not all(isinstance(entry, dict) for entry in table.values()):
        raise TypeError(f"{name} must be an object of objects")
    return list(table.items())


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _scopes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"scopes must be a list, got {type(value).__name__}")
    return tuple(_str(scope) for scope in value)
