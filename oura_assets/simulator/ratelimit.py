"""Oura's request limits: rolling windows per application (client id) and, optionally, per access token.

The limits come from `SimulatorConfig` (`app_rate_limit`, `token_rate_limit`) unless the `rate_limit`
fault overrides one tier. Oura documents `X-RateLimit-Window` as "the rolling window length in seconds
that the ceiling applies to" and `X-RateLimit-Reset` as the moment "the window resets and quota is fully
restored" [spec, Rate Limit Response Headers], so a request is refused when `limit` requests were already
let through in the `window_s` seconds before it reached Oura (a sliding log per tier and key): stricter than
fixed windows, which let a client send up to twice the limit across a window boundary. `Retry-After` is the
time until the oldest counted request leaves the window (room for one more), `X-RateLimit-Reset` when the
newest does.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
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
    """The requests let through per (tier, key) within their window; every method takes the lock."""

    def __init__(
        self, config: SimulatorConfig, faults: FaultSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config
        self._clock = clock
        self._faults = faults
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], list[float]] = {}

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

    def check(self, client_id: str, token_digest: str, at: float | None = None) -> RateLimited | None:
        """Counts a request that reached Oura at `at` (epoch seconds; now when None) against the application
        and access-token windows; the first full one wins.

        Requests are counted when they arrived, not when this process got to them, so each log is kept in
        order of arrival: one checked a little after a later arrival is still counted at its own moment, and
        only what arrived in the `window_s` before it counts against it. A refused request counts against
        neither (Oura's behaviour here is not documented; not counting it is the lenient reading, and the
        client's pacing must not depend on it either way).
        """
        limits = self._limits(client_id, token_digest)
        with self._lock:
            now = self._clock() if at is None else at
            logs = []
            for tier, key, limit in limits:
                sent = self._sent.setdefault((tier, key), [])
                # Older than any window still being checked: arrivals are checked within moments of each
                # other, so a margin of one more window keeps every one a late check could still count.
                stale = bisect.bisect_right(sent, now - 2 * limit.window_s)
                if stale:
                    del sent[:stale]
                first = bisect.bisect_right(sent, now - limit.window_s)
                last = bisect.bisect_right(sent, now)
                first = max(first, last - limit.limit)  # the limit was lowered since these were counted
                if last - first >= limit.limit:
                    oldest, newest = (sent[first], sent[last - 1]) if last > first else (now, now)
                    return RateLimited(
                        limit.limit,
                        limit.window_s,
                        math.ceil(newest + limit.window_s),
                        max(1, math.ceil(oldest + limit.window_s - now)),
                        tier,
                    )
                logs.append(sent)
            for sent in logs:
                bisect.insort(sent, now)
            return None

    def clear(self) -> None:
        """Every window starts empty (after the limits changed)."""
        with self._lock:
            self._sent.clear()
