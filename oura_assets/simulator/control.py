"""`SimulatorControl`: the `/_sim/*` knobs in-process, for tests and the demo (`SimulatorServer.control`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oura_assets.simulator.grant_store import KNOWN_SCOPES
from oura_assets.simulator.state import SimulatorState


class SimulatorControl:
    """In-process control of a running simulator: the same knobs as `/_sim/*`, without HTTP."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Partial update: `latency_ms`, `error_rate`, `drop_rate`, `rate_limit` ({limit, window_s[, tier]} or
        None), `users` ({name: {forbidden, refresh_reject, expire_access_tokens,
        withhold_scopes: [scope, ...]}}), `readings`
        ({date_ends, last_next_token, timestamps}). Returns the faults now."""
        return self._state.set_faults(**changes)

    def set_readings(self, **readings: str) -> dict[str, Any]:
        """Partial update of the readings (`Readings`: `date_ends`, `last_next_token`, `timestamps`)."""
        return self._state.set_faults(readings=readings)

    def set_user_faults(self, user: str, **flags: bool) -> dict[str, Any]:
        return self._state.set_faults(users={user: flags})

    def faults(self) -> dict[str, Any]:
        return self._state.faults.as_dict()

    def reset(self) -> dict[str, Any]:
        """Every fault off, rate-limit windows emptied, the auth clock back on the wall clock.

        Tokens, the data clock and stats are kept."""
        return self._state.reset_faults()

    def set_clock(self, now: datetime | None, *, frozen: bool = False) -> None:
        """Move the data clock to `now` (it keeps running unless `frozen`); `None` follows the wall clock."""
        self._state.clock.set(now, frozen=frozen)

    def now(self) -> datetime:
        return self._state.clock.now()

    def advance_auth_clock(self, seconds: float) -> None:
        """Move the clock that expires tokens and codes forward (tests of expiry without sleeping)."""
        self._state.clock.advance_auth(seconds)

    def issue_tokens(
        self, user: str, scopes: tuple[str, ...] = KNOWN_SCOPES, client_id: str | None = None
    ) -> dict[str, Any]:
        """A token response for `user` as if they had consented, skipping the browser."""
        return self._state.grants.issue_tokens(user, tuple(scopes), client_id)

    def stats(self) -> dict[str, Any]:
        return self._state.request_stats.as_dict()

    def answered(self, route_prefix: str = "GET /v2/") -> list[tuple[float, str]]:
        """(epoch seconds it arrived, status) of every answered data request since the last `reset_stats`."""
        return self._state.request_stats.answered(route_prefix)

    def reset_stats(self) -> None:
        self._state.request_stats.reset()
