"""Oura's request limits: fixed windows per application (client id) and, optionally, per access token.

The limits come from `SimulatorConfig` (`app_rate_limit`, `token_rate_limit`) unless the `rate_limit`
fault overrides one tier. Windows are aligned to the epoch on the wall clock, like Oura's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from oura_assets.simulator.config import RateLimit, SimulatorConfig
from oura_assets.simulator.fault_settings import FaultSettings


@dataclass(frozen=True)
class RateLimited:
    """A refused request: what the 429's headers say."""

    limit: int
    window_s: float
    reset_epoch: int
    retry_after_s: int
    tier: str


class RateLimitWindows:
    """Request counts per (tier, key) in the current window; every method takes the lock."""

    def __init__(self, config: SimulatorConfig, faults: FaultSettings) -> None:
        self._config = config
        self._faults = faults
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}

    def _limits(self, client_id: str, token_digest: str) -> list[tuple[str, str, RateLimit]]:
        current = self._faults.current()
        fault, tier = current.rate_limit, current.rate_limit_tier
        app_limit = fault if fault is not None and tier == "application" else None
        limits = [("application", client_id, app_limit or self._config.app_rate_limit)]
        token_limit = fault if fault is not None and tier == "access_token" else None
        token_limit = token_limit or self._config.token_rate_limit
        if token_limit is not None:
            limits.append(("access_token", token_digest, token_limit))
        return limits

    def check(self, client_id: str, token_digest: str) -> RateLimited | None:
        """Counts a request against the application and access-token windows; the first full one wins."""
        limits = self._limits(client_id, token_digest)
        with self._lock:
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

    def clear(self) -> None:
        """Every window starts empty (after the limits changed)."""
        with self._lock:
            self._windows.clear()
