"""The simulator's mutable state: OAuth grants and tokens, the data clock, fault knobs, rate limits and stats.

One lock guards it all: uvicorn serves from its own thread while tests and the demo poke the same state
in-process through `SimulatorControl` (also reachable over HTTP under `/_sim/`).

Two clocks, on purpose. The data clock (`now()`) decides which documents exist and is settable, so a test can
stand at any moment of a simulated user's life. Tokens, codes and rate-limit windows run on the wall
clock (plus `advance_auth_clock`), like Oura's, so moving the data clock never expires a token behind a
client's back.

Only the grant tables outlive the process (when `SimulatorConfig.state_path` is set, see `grants.py`): they
are what a real Oura would still know after a restart. Faults, clocks, rate-limit windows and stats are a
test's or a demo's knobs and start afresh.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from oura_assets.simulator.config import ClientRegistration, RateLimit, SimulatorConfig
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

log = logging.getLogger(__name__)

KNOWN_SCOPES = ("email", "personal", "daily", "heartrate", "workout", "tag", "session", "spo2Daily")
USER_FAULTS = ("forbidden", "refresh_reject", "expire_access_tokens")


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


@dataclass
class UserFaults:
    forbidden: bool = False
    refresh_reject: bool = False
    # Tokens with a serial at or below this cutoff count as expired; None when the knob is off.
    expire_cutoff: int | None = None

    def as_dict(self) -> dict[str, bool]:
        return {
            "forbidden": self.forbidden,
            "refresh_reject": self.refresh_reject,
            "expire_access_tokens": self.expire_cutoff is not None,
        }


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    rate_limit: RateLimit | None = None
    rate_limit_tier: str = "application"
    users: dict[str, UserFaults] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        limit = self.rate_limit
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "drop_rate": self.drop_rate,
            "rate_limit": None
            if limit is None
            else {"limit": limit.limit, "window_s": limit.window_s, "tier": self.rate_limit_tier},
            "users": {name: faults.as_dict() for name, faults in sorted(self.users.items())},
        }


@dataclass(frozen=True)
class RateLimited:
    """A refused request: what the 429's headers say."""

    limit: int
    window_s: float
    reset_epoch: int
    retry_after_s: int
    tier: str


class SimulatorState:
    """Everything that changes while the simulator runs. Every public method takes the lock."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._rng = random.Random(config.seed)
        # Tokens and codes are keyed by `digest()` of their value, never by the value itself (see grants.py).
        self._tables = GrantTables() if config.state_path is None else load_tables(config.state_path)
        self._grants: dict[str, Grant] = self._tables.grants
        self._access: dict[str, AccessToken] = self._tables.access
        self._refresh: dict[str, RefreshToken] = self._tables.refresh
        self._codes: dict[str, AuthCode] = self._tables.codes
        self._auth_offset_s = 0.0
        self._clock_base_sim: datetime | None = config.now
        self._clock_base_real = time.time()
        self._clock_frozen = False
        self.faults = Faults()
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}
        self._requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._counters: Counter[str] = Counter()

    def wall(self) -> float:
        """Seconds since the epoch on the auth clock (wall clock plus `advance_auth_clock`)."""
        return time.time() + self._auth_offset_s

    def now(self) -> datetime:
        """The data clock (UTC)."""
        with self._lock:
            if self._clock_base_sim is None:
                return datetime.now(UTC)
            if self._clock_frozen:
                return self._clock_base_sim
            elapsed = time.time() - self._clock_base_real
            return datetime.fromtimestamp(self._clock_base_sim.timestamp() + elapsed, UTC)

    def set_clock(self, now: datetime | None, *, frozen: bool = False) -> None:
        if now is not None and now.tzinfo is None:
            raise ValueError("the data clock needs a timezone-aware datetime")
        with self._lock:
            self._clock_base_sim = None if now is None else now.astimezone(UTC)
            self._clock_base_real = time.time()
            self._clock_frozen = frozen and now is not None

    def advance_auth_clock(self, seconds: float) -> None:
        with self._lock:
            self._auth_offset_s += seconds

    def client(self, client_id: str) -> ClientRegistration | None:
        return self.config.clients.get(client_id)

    def _saved(self) -> None:
        """Write the grant tables to `config.state_path` (if any); called, under the lock, after each change.

        A failed write is logged, not raised: the change already holds in memory and the client's request
        should still succeed; only a later simulator process would miss it.
        """
        path = self.config.state_path
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
        with self._lock:
            self._codes[digest(code)] = AuthCode(
                client_id, redirect_uri, user, scopes, self.wall() + self.config.code_ttl_s
            )
            self._saved()
        return code

    def _new_pair(self, grant: Grant) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._tables.serial += 1
        self._access[digest(access)] = AccessToken(
            grant.grant_id, self.wall() + self.config.access_token_ttl_s, self._tables.serial
        )
        self._refresh[digest(refresh)] = RefreshToken(grant.grant_id, digest(access))
        self._saved()
        return {
            "token_type": "bearer",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.config.access_token_ttl_s,
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
                self._counters["code_reuse"] += 1
                if entry.grant_id is not None:
                    self._kill_grant(entry.grant_id, "revoked")
                    self._saved()
                raise OAuthError("invalid_grant", "the authorization code was already used")
            if self.wall() > entry.expires_at:
                raise OAuthError("invalid_grant", "the authorization code has expired")
            if redirect_uri != entry.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
            entry.used = True
            grant = Grant(secrets.token_hex(8), entry.user, client_id, entry.scopes)
            self._grants[grant.grant_id] = grant
            entry.grant_id = grant.grant_id
            self._counters["code_grants"] += 1
            return self._new_pair(grant)

    def issue_tokens(
        self, user: str, scopes: tuple[str, ...] = KNOWN_SCOPES, client_id: str | None = None
    ) -> dict[str, Any]:
        """A fresh grant without the browser dance, for tests and benchmarks."""
        with self._lock:
            if client_id is None:
                client_id = next(iter(self.config.clients), "sim-test-client")
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
                self._counters["spent_refresh_reuse"] += 1
                raise OAuthError("invalid_grant", "the refresh token was already used or revoked")
            user_faults = self.faults.users.get(grant.user)
            if user_faults is not None and user_faults.refresh_reject:
                self._counters["refresh_rejected"] += 1
                raise OAuthError("invalid_grant", "the user's authorization is no longer valid")
            entry.spent = True
            old = self._access.get(entry.access_digest)
            if old is not None and old.dead is None:
                old.dead = "rotated"
            self._counters["refresh_grants"] += 1
            return self._new_pair(grant)

    def revoke(self, token: str) -> bool:
        with self._lock:
            key = digest(token)
            access = self._access.get(key)
            refresh = self._refresh.get(key)
            entry = access or refresh
            # Strictest reading (Oura does not document it): only a live token revokes its grant. A token that
            # rotation already replaced is unknown for revocation purposes — answered 200 per RFC 7009, but
            # the grant's newer tokens stay valid — so a client must revoke the pair it actually holds.
            if entry is None or entry.dead is not None:
                return False
            grant_id = entry.grant_id
            self._kill_grant(grant_id, "revoked")
            self._saved()
            self._counters["revocations"] += 1
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
            if self.wall() >= entry.expires_at:
                raise TokenRejected("The access token has expired.")
            user_faults = self.faults.users.get(grant.user)
            if (
                user_faults
                and user_faults.expire_cutoff is not None
                and entry.serial <= user_faults.expire_cutoff
            ):
                raise TokenRejected("The access token has expired.")
            return Principal(grant.user, grant.client_id, grant.scopes, key)

    def user_forbidden(self, user: str) -> bool:
        with self._lock:
            faults = self.faults.users.get(user)
            return bool(faults and faults.forbidden)

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Partial update of the fault knobs; unknown keys raise ValueError so typos do not pass silently."""
        with self._lock:
            faults = self.faults
            for key, value in changes.items():
                if key in ("latency_ms", "error_rate", "drop_rate"):
                    number = float(value or 0)
                    if number < 0 or (key != "latency_ms" and number > 1):
                        raise ValueError(f"{key} out of range: {value!r}")
                    setattr(faults, key, number)
                elif key == "rate_limit":
                    if value is None:
                        faults.rate_limit, faults.rate_limit_tier = None, "application"
                    else:
                        tier = value.get("tier", "application") if isinstance(value, dict) else "application"
                        if tier not in ("application", "access_token"):
                            raise ValueError(
                                f"rate_limit tier must be application or access_token, got {tier!r}"
                            )
                        faults.rate_limit = RateLimit.coerce(value)
                        faults.rate_limit_tier = tier
                        self._windows.clear()
                elif key == "users":
                    for user, flags in (value or {}).items():
                        self._set_user_faults(user, flags)
                else:
                    raise ValueError(f"unknown fault {key!r}")
            return faults.as_dict()

    def _set_user_faults(self, user: str, flags: dict[str, Any] | None) -> None:
        if not flags:
            self.faults.users.pop(user, None)
            return
        unknown = set(flags) - set(USER_FAULTS)
        if unknown:
            raise ValueError(f"unknown user fault(s) {sorted(unknown)}; known: {USER_FAULTS}")
        current = self.faults.users.setdefault(user, UserFaults())
        if "forbidden" in flags:
            current.forbidden = bool(flags["forbidden"])
        if "refresh_reject" in flags:
            current.refresh_reject = bool(flags["refresh_reject"])
        if "expire_access_tokens" in flags:
            # Expires the tokens issued so far; the ones a refresh hands out afterwards work.
            current.expire_cutoff = self._tables.serial if flags["expire_access_tokens"] else None

    def reset_faults(self) -> dict[str, Any]:
        with self._lock:
            self.faults = Faults()
            self._windows.clear()
            self._auth_offset_s = 0.0
            return self.faults.as_dict()

    def roll(self, probability: float) -> bool:
        """A seeded die: True with `probability`."""
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability

    def choice(self, options: tuple[int, ...]) -> int:
        with self._lock:
            return self._rng.choice(options)

    def check_rate(self, principal: Principal) -> RateLimited | None:
        """Counts a request against the application and access-token windows; the first full one wins."""
        with self._lock:
            limits: list[tuple[str, str, RateLimit]] = []
            fault = self.faults.rate_limit
            app_limit = fault if fault is not None and self.faults.rate_limit_tier == "application" else None
            limits.append(("application", principal.client_id, app_limit or self.config.app_rate_limit))
            token_limit = (
                fault if fault is not None and self.faults.rate_limit_tier == "access_token" else None
            )
            token_limit = token_limit or self.config.token_rate_limit
            if token_limit is not None:
                limits.append(("access_token", principal.token_digest, token_limit))
            now = time.time()
            for tier, key, limit in limits:
                window = int(now // limit.window_s)
                start, count = self._windows.get((tier, key), (window, 0))
                if start != window:
                    count = 0
                if count >= limit.limit:
                    reset = (window + 1) * limit.window_s
                    return RateLimited(
                        limit.limit, limit.window_s, int(reset), max(1, int(reset - now + 0.999)), tier
                    )
                self._windows[(tier, key)] = (window, count + 1)
            return None

    def record(self, route: str, status: int | str) -> None:
        with self._lock:
            self._requests[route][str(status)] += 1

    def count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": {
                    route: dict(sorted(counts.items())) for route, counts in sorted(self._requests.items())
                },
                "total_requests": sum(sum(c.values()) for c in self._requests.values()),
                "refresh_grants": self._counters["refresh_grants"],
                "code_grants": self._counters["code_grants"],
                "spent_refresh_reuse": self._counters["spent_refresh_reuse"],
                "code_reuse": self._counters["code_reuse"],
                "refresh_rejected": self._counters["refresh_rejected"],
                "revocations": self._counters["revocations"],
                "dropped": self._counters["dropped"],
                "injected_errors": self._counters["injected_errors"],
                "rate_limited": self._counters["rate_limited"],
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._counters.clear()


class SimulatorControl:
    """In-process control of a running simulator: the same knobs as `/_sim/*`, without HTTP."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Partial update: `latency_ms`, `error_rate`, `drop_rate`, `rate_limit` ({limit, window_s[, tier]} or
        None), `users` ({name: {forbidden, refresh_reject, expire_access_tokens}}). Returns the faults now."""
        return self._state.set_faults(**changes)

    def set_user_faults(self, user: str, **flags: bool) -> dict[str, Any]:
        return self._state.set_faults(users={user: flags})

    def faults(self) -> dict[str, Any]:
        with self._state._lock:
            return self._state.faults.as_dict()

    def reset(self) -> dict[str, Any]:
        """Every fault off, rate-limit windows emptied, the auth clock back on the wall clock.

        Tokens, the data clock and stats are kept."""
        return self._state.reset_faults()

    def set_clock(self, now: datetime | None, *, frozen: bool = False) -> None:
        """Move the data clock to `now` (it keeps running unless `frozen`); `None` follows the wall clock."""
        self._state.set_clock(now, frozen=frozen)

    def now(self) -> datetime:
        return self._state.now()

    def advance_auth_clock(self, seconds: float) -> None:
        """Move the clock that expires tokens and codes forward (tests of expiry without sleeping)."""
        self._state.advance_auth_clock(seconds)

    def issue_tokens(
        self, user: str, scopes: tuple[str, ...] = KNOWN_SCOPES, client_id: str | None = None
    ) -> dict[str, Any]:
        """A token response for `user` as if they had consented, skipping the browser."""
        return self._state.issue_tokens(user, tuple(scopes), client_id)

    def stats(self) -> dict[str, Any]:
        return self._state.stats()

    def reset_stats(self) -> None:
        self._state.reset_stats()
