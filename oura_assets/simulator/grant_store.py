"""The simulator's OAuth grants in use: issuing codes and token pairs, rotating, revoking, authenticating.

The records and their optional file are in `grants.py`; this is the one writer of those tables. Tokens, codes
and their expiry run on the auth clock (`clock.Clocks.wall`). Two per-user faults act here:
`refresh_reject` answers a refresh with `invalid_grant`, `expire_access_tokens` expires the tokens issued
before it was set.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from oura_assets.simulator.clock import Clocks
from oura_assets.simulator.config import SimulatorConfig
from oura_assets.simulator.fault_settings import FaultSettings
from oura_assets.simulator.grants import (
    AccessToken,
    AuthCode,
    Grant,
    GrantTables,
    RefreshToken,
    digest,
    load_tables,
    save_tables,
)
from oura_assets.simulator.stats import RequestStats

log = logging.getLogger(__name__)

KNOWN_SCOPES = ("email", "personal", "daily", "heartrate", "workout", "tag", "session", "spo2Daily")


class OAuthError(Exception):
    """An RFC 6749 error answer from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class TokenRejected(Exception):
    """The bearer token cannot be used; `detail` says why without repeating it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for."""

    user: str
    client_id: str
    scopes: tuple[str, ...]
    # The token's digest, which keys the per-token rate-limit window; the plaintext is not kept.
    token_digest: str


class GrantStore:
    """Grants, codes and tokens behind one lock, saved to `config.state_path` (if any) after each change."""

    def __init__(
        self, config: SimulatorConfig, clock: Clocks, faults: FaultSettings, stats: RequestStats
    ) -> None:
        self._config = config
        self._clock = clock
        self._faults = faults
        self._stats = stats
        self._lock = threading.RLock()
        # Tokens and codes are keyed by `digest()` of their value, never by the value itself (see grants.py).
        self._tables = GrantTables() if config.state_path is None else load_tables(config.state_path)
        self._grants: dict[str, Grant] = self._tables.grants
        self._access: dict[str, AccessToken] = self._tables.access
        self._refresh: dict[str, RefreshToken] = self._tables.refresh
        self._codes: dict[str, AuthCode] = self._tables.codes

    def serial(self) -> int:
        """The serial of the newest access token issued."""
        with self._lock:
            return self._tables.serial

    def users(self) -> list[str]:
        """The users holding a live grant (whose data changes Oura would announce)."""
        with self._lock:
            return sorted({g.user for g in self._grants.values() if not g.revoked})

    def grant_count(self) -> int:
        with self._lock:
            return len(self._grants)

    def _saved(self) -> None:
        """Write the tables to `config.state_path` (if any); called, under the lock, after each change.

        A failed write is logged, not raised: the change already holds in memory and the client's request
        should still succeed; only a later simulator process would miss it.
        """
        path = self._config.state_path
        if path is None:
            return
        try:
            save_tables(path, self._tables)
        except OSError as exc:
            log.warning(
                "Oura simulator: could not save its grants to %s (%s); a restarted simulator will not know "
                "the tokens issued since",
                path,
                exc,
            )

    def issue_code(self, client_id: str, redirect_uri: str, user: str, scopes: tuple[str, ...]) -> str:
        code = secrets.token_urlsafe(24)
        # Oura's consent page lets the user untick scopes: the grant (and the token answer's `scope`) holds
        # only those left ticked.
        withheld = self._faults.user(user).withhold_scopes
        scopes = tuple(scope for scope in scopes if scope not in withheld)
        with self._lock:
            self._codes[digest(code)] = AuthCode(
                client_id, redirect_uri, user, scopes, self._clock.wall() + self._config.code_ttl_s
            )
            self._saved()
        return code

    def _new_pair(self, grant: Grant) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._tables.serial += 1
        self._access[digest(access)] = AccessToken(
            grant.grant_id, self._clock.wall() + self._config.access_token_ttl_s, self._tables.serial
        )
        self._refresh[digest(refresh)] = RefreshToken(grant.grant_id, digest(access))
        self._saved()
        return {
            "token_type": "bearer",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self._config.access_token_ttl_s,
            "scope": " ".join(grant.scopes),
        }

    def _kill_grant(self, grant_id: str, reason: str) -> None:
        grant = self._grants.get(grant_id)
        if grant is not None:
            grant.revoked = True
        for token in self._access.values():
            if token.grant_id == grant_id and token.dead is None:
                token.dead = reason
        for refresh in self._refresh.values():
            if refresh.grant_id == grant_id:
                refresh.spent = True

    def exchange_code(self, client_id: str, code: str, redirect_uri: str | None) -> dict[str, Any]:
        with self._lock:
            entry = self._codes.get(digest(code))
            if entry is None or entry.client_id != client_id:
                raise OAuthError("invalid_grant", "the authorization code is unknown")
            if entry.used:
                # RFC 6749 §4.1.2: a replayed code revokes what it already granted.
                self._stats.count("code_reuse")
                if entry.grant_id is not None:
                    self._kill_grant(entry.grant_id, "revoked")
                    self._saved()
                raise OAuthError("invalid_grant", "the authorization code was already used")
            if self._clock.wall() > entry.expires_at:
                raise OAuthError("invalid_grant", "the authorization code has expired")
            if redirect_uri != entry.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
            entry.used = True
            grant = Grant(secrets.token_hex(8), entry.user, client_id, entry.scopes)
            self._grants[grant.grant_id] = grant
            entry.grant_id = grant.grant_id
            self._stats.count("code_grants")
            return self._new_pair(grant)

    def issue_tokens(
        self, user: str, scopes: tuple[str, ...] = KNOWN_SCOPES, client_id: str | None = None
    ) -> dict[str, Any]:
        """A fresh grant without the browser dance, for tests and benchmarks."""
        with self._lock:
            if client_id is None:
                client_id = next(iter(self._config.clients), "sim-test-client")
            grant = Grant(secrets.token_hex(8), user, client_id, tuple(scopes))
            self._grants[grant.grant_id] = grant
            return self._new_pair(grant)

    def refresh(self, client_id: str, refresh_token: str) -> dict[str, Any]:
        with self._lock:
            entry = self._refresh.get(digest(refresh_token))
            grant = self._grants.get(entry.grant_id) if entry else None
            if entry is None or grant is None or grant.client_id != client_id:
                raise OAuthError("invalid_grant", "the refresh token is unknown")
            if entry.spent or grant.revoked:
                self._stats.count("spent_refresh_reuse")
                raise OAuthError("invalid_grant", "the refresh token was already used or revoked")
            if self._faults.user(grant.user).refresh_reject:
                self._stats.count("refresh_rejected")
                raise OAuthError("invalid_grant", "the user's authorization is no longer valid")
            entry.spent = True
            old = self._access.get(entry.access_digest)
            if old is not None and old.dead is None:
                old.dead = "rotated"
            self._stats.count("refresh_grants")
            return self._new_pair(grant)

    def revoke(self, token: str) -> bool:
        with self._lock:
            key = digest(token)
            access = self._access.get(key)
            refresh = self._refresh.get(key)
            # Either token of a pair revokes the grant (RFC 7009 §2.1: revoking a refresh token revokes the
            # authorization it belongs to). Strictest reading (Oura does not document it): only a live token
            # does. One that rotation already replaced (an access token marked dead, a spent refresh token)
            # is unknown for revocation purposes — answered 200 per RFC 7009, but the grant's newer tokens
            # stay valid — so a client must revoke the pair it actually holds.
            if access is not None and access.dead is None:
                grant_id = access.grant_id
            elif access is None and refresh is not None and not refresh.spent:
                grant_id = refresh.grant_id
            else:
                return False
            self._kill_grant(grant_id, "revoked")
            self._saved()
            self._stats.count("revocations")
            return True

    def authenticate(self, token: str) -> Principal:
        with self._lock:
            key = digest(token)
            entry = self._access.get(key)
            grant = self._grants.get(entry.grant_id) if entry else None
            if entry is None or grant is None:
                raise TokenRejected("The access token is invalid.")
            if entry.dead is not None or grant.revoked:
                raise TokenRejected(f"The access token has been {entry.dead or 'revoked'}.")
            if self._clock.wall() >= entry.expires_at:
                raise TokenRejected("The access token has expired.")
            cutoff = self._faults.user(grant.user).expire_cutoff
            if cutoff is not None and entry.serial <= cutoff:
                raise TokenRejected("The access token has expired.")
            withheld = self._faults.user(grant.user).withhold_scopes
            scopes = tuple(scope for scope in grant.scopes if scope not in withheld)
            return Principal(grant.user, grant.client_id, scopes, key)
