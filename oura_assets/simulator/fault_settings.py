"""The fault knobs (`/_sim/faults`, `SimulatorControl.set_faults`) and the seeded dice that apply them.

Transport faults (latency, 5xx, dropped connections) are applied by `faults.FaultInjection`; a rate-limit
override by `ratelimit.RateLimitWindows`; per-user faults by the grant store (`refresh_reject`,
`expire_access_tokens`, `withhold_scopes`) and the data routes (`forbidden`, `withhold_scopes`). The
`readings` (how the data routes read Oura's ambiguities, `readings.py`) sit here too, so one
`POST /_sim/faults` sets them and `DELETE` restores the configured ones.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from oura_assets.simulator.config import RateLimit
from oura_assets.simulator.readings import Readings

USER_FAULTS = ("forbidden", "refresh_reject", "expire_access_tokens", "withhold_scopes")


@dataclass
class UserFaults:
    forbidden: bool = False
    refresh_reject: bool = False
    # Tokens with a serial at or below this cutoff count as expired; None when the knob is off.
    expire_cutoff: int | None = None
    # Scopes the user does not grant: unticked on Oura's consent page (a new grant leaves them out) and, for
    # grants already made, withdrawn since (their routes answer 403 as Oura does for a scope not granted).
    withhold_scopes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "forbidden": self.forbidden,
            "refresh_reject": self.refresh_reject,
            "expire_access_tokens": self.expire_cutoff is not None,
            "withhold_scopes": list(self.withhold_scopes),
        }


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    rate_limit: RateLimit | None = None
    rate_limit_tier: str = "application"
    users: dict[str, UserFaults] = field(default_factory=dict)
    readings: Readings = field(default_factory=Readings)

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
            "readings": self.readings.as_dict(),
        }


class FaultSettings:
    """The current faults behind a lock; readers get copies, so a knob never changes under a request."""

    def __init__(self, seed: int = 0, readings: Readings | None = None) -> None:
        self._lock = threading.Lock()
        self._default_readings = readings or Readings()
        self._faults = Faults(readings=self._default_readings)
        self._rng = random.Random(seed)

    def current(self) -> Faults:
        """A copy of every knob (the per-user ones included)."""
        with self._lock:
            users = {name: dataclasses.replace(flags) for name, flags in self._faults.users.items()}
            return dataclasses.replace(self._faults, users=users)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return self._faults.as_dict()

    def readings(self) -> Readings:
        with self._lock:
            return self._faults.readings

    def user(self, name: str) -> UserFaults:
        """The user's faults (all off when none are set)."""
        with self._lock:
            flags = self._faults.users.get(name)
            return UserFaults() if flags is None else dataclasses.replace(flags)

    def update(self, changes: dict[str, Any], *, token_serial: int) -> dict[str, Any]:
        """Partial update, returning the faults now; unknown keys raise ValueError so typos do not pass.

        `token_serial` is the serial of the newest access token: `expire_access_tokens` expires the tokens
        issued up to it, and the ones a refresh hands out afterwards work.
        """
        with self._lock:
            faults = self._faults
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
                elif key == "users":
                    for user, flags in (value or {}).items():
                        self._set_user(user, flags, token_serial)
                elif key == "readings":
                    if value is not None and not isinstance(value, dict):
                        raise ValueError(f"readings must be an object, got {value!r}")
                    faults.readings = faults.readings.updated(value)
                else:
                    raise ValueError(f"unknown fault {key!r}")
            return faults.as_dict()

    def _set_user(self, user: str, flags: dict[str, Any] | None, token_serial: int) -> None:
        if not flags:
            self._faults.users.pop(user, None)
            return
        unknown = set(flags) - set(USER_FAULTS)
        if unknown:
            raise ValueError(f"unknown user fault(s) {sorted(unknown)}; known: {USER_FAULTS}")
        current = self._faults.users.setdefault(user, UserFaults())
        if "forbidden" in flags:
            current.forbidden = bool(flags["forbidden"])
        if "refresh_reject" in flags:
            current.refresh_reject = bool(flags["refresh_reject"])
        if "expire_access_tokens" in flags:
            current.expire_cutoff = token_serial if flags["expire_access_tokens"] else None
        if "withhold_scopes" in flags:
            scopes = flags["withhold_scopes"] or []
            if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
                raise ValueError(f"withhold_scopes must be a list of scope names, got {scopes!r}")
            current.withhold_scopes = tuple(dict.fromkeys(scopes))

    def reset(self) -> dict[str, Any]:
        """Every fault off and the configured readings back (the dice keep rolling where they were)."""
        with self._lock:
            self._faults = Faults(readings=self._default_readings)
            return self._faults.as_dict()

    def roll(self, probability: float) -> bool:
        """A seeded die: True with `probability`."""
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability

    def choice(self, options: tuple[int, ...]) -> int:
        with self._lock:
            return self._rng.choice(options)
