"""What `/_sim/stats` reports: request counts by route and status, named event counters, and a timeline.

The timeline counts the Oura data requests (`/v2/...`) answered in each wall-clock second, by status, so a
benchmark can read the rate a client sustained and when its 429s came, as Oura would have seen them.
In-process, `answered` also gives the exact time each request arrived, for windows that do not start on a
second: when it reached Oura is what Oura's limit counts, and what the client's pacing decides (the time it
was answered adds the simulator's own handling time, which varies with the request and the machine's load).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

# The requests kept for `answered` (the newest ones): enough for any test or benchmark run.
ANSWERED_KEPT = 100_000

# The counters `/_sim/stats` always shows, zero or not.
COUNTERS = (
    "refresh_grants",
    "code_grants",
    "spent_refresh_reuse",
    "code_reuse",
    "refresh_rejected",
    "revocations",
    "dropped",
    "injected_errors",
    "rate_limited",
)


class RequestStats:
    """Counts kept since start or the last `reset()`; every method takes the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._counters: Counter[str] = Counter()
        self._timeline: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self._answered: deque[tuple[float, str, str]] = deque(maxlen=ANSWERED_KEPT)

    def record(self, route: str, status: int | str, arrived: float | None = None) -> None:
        """One answered request (`status` may be "dropped"), which arrived at `arrived` (epoch seconds; now
        when not given)."""
        now = time.time()
        second = int(now)
        with self._lock:
            self._requests[route][str(status)] += 1
            self._answered.append((now if arrived is None else arrived, route, str(status)))
            if route.startswith("GET /v2/"):
                self._timeline[second][str(status)] += 1

    def answered(self, route_prefix: str = "GET /v2/") -> list[tuple[float, str]]:
        """(epoch seconds it arrived, status) of each answered request whose route starts with `route_prefix`
        (by default Oura's data API, which the application limit counts), in the order they were answered."""
        with self._lock:
            return [(at, status) for at, route, status in self._answered if route.startswith(route_prefix)]

    def count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": {
                    route: dict(sorted(counts.items())) for route, counts in sorted(self._requests.items())
                },
                "total_requests": sum(sum(c.values()) for c in self._requests.values()),
                **{name: self._counters[name] for name in COUNTERS},
                "timeline": {
                    str(second): dict(sorted(counts.items()))
                    for second, counts in sorted(self._timeline.items())
                },
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._counters.clear()
            self._timeline.clear()
            self._answered.clear()
