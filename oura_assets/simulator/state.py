"""The simulator's mutable state, composed from small parts that each keep their own lock.

uvicorn serves from its own thread while tests and the demo poke the same state in-process through
`SimulatorControl` (also reachable over HTTP under `/_sim/`). The parts:
- `clock`: the settable data clock and the auth clock (`clock.py`);
- `grants`: OAuth codes, grants and tokens, the only part that outlives the process (`grant_store.py`, when
  `SimulatorConfig.state_path` is set): what a real Oura would still know after a restart;
- `faults`: the fault knobs, the readings of Oura's ambiguities and the seeded dice (`fault_settings.py`);
- `rate_windows`: the request-limit windows (`ratelimit.py`);
- `request_stats`: what `/_sim/stats` reports (`stats.py`).
Faults, clocks, rate-limit windows and stats are a test's or a demo's knobs and start afresh.

Lock order, so no two parts deadlock: the grant store and the rate-limit windows may ask the fault settings
and the stats while holding their own lock; those two never call another part.
"""

from __future__ import annotations

from typing import Any

from oura_assets.simulator.clock import Clocks
from oura_assets.simulator.config import ClientRegistration, SimulatorConfig
from oura_assets.simulator.fault_settings import FaultSettings
from oura_assets.simulator.grant_store import KNOWN_SCOPES, GrantStore, Principal
from oura_assets.simulator.ratelimit import RateLimitWindows
from oura_assets.simulator.stats import RequestStats


class SimulatorState:
    """Everything that changes while the simulator runs; callers use its parts, this only wires them."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = Clocks(config.now)
        self.faults = FaultSettings(config.seed, config.readings)
        self.request_stats = RequestStats()
        self.grants = GrantStore(config, self.clock, self.faults, self.request_stats)
        self.rate_windows = RateLimitWindows(config, self.faults)

    def client(self, client_id: str) -> ClientRegistration | None:
        return self.config.clients.get(client_id)

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Partial update of the fault knobs (`FaultSettings.update`); a new rate limit clears the windows."""
        try:
            return self.faults.update(changes, token_serial=self.grants.serial())
        finally:
            if changes.get("rate_limit") is not None:
                self.rate_windows.clear()

    def reset_faults(self) -> dict[str, Any]:
        """Every fault off, rate-limit windows emptied, the auth clock back on the wall clock."""
        self.rate_windows.clear()
        self.clock.reset_auth()
        return self.faults.reset()

    # Shortcuts for in-process callers that only want a token or a principal (tests, benchmarks).

    def issue_tokens(
        self, user: str, scopes: tuple[str, ...] = KNOWN_SCOPES, client_id: str | None = None
    ) -> dict[str, Any]:
        return self.grants.issue_tokens(user, scopes, client_id)

    def authenticate(self, token: str) -> Principal:
        return self.grants.authenticate(token)

    def stats(self) -> dict[str, Any]:
        return self.request_stats.as_dict()
