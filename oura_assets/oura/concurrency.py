"""How many patients a run keeps in flight: enough to keep the shared rate budget busy (Little's law).

A patient's requests go one after another (a page needs the previous page's `next_token`, a collection is
landed whole), so a run has as many requests in flight as patients. To send `rate` requests per second when
each request occupies its patient for `cycle` seconds, Little's law asks for `rate x cycle` patients in
flight. The cycle is measured, not assumed: from the moment a patient's request left to the moment that
patient asks for its next one, which is Oura's latency plus our own work in between (parsing pages, the
token, landing the rows under the warehouse lock), so a slow warehouse raises the count just as a slow Oura
does. Time spent waiting for the budget is not part of it: that wait means the budget, not the patients, is
the bottleneck. A fixed count (the seed's 4) is right for one latency only: at 300 ms and 18 requests/s it
leaves the budget a third idle; at 30 ms, 16 threads only queue.

`headroom` covers the spread of the cycle around its mean (a patient that lands its rows stalls for a
moment) and a budget shared with other runs (each run sizes for the whole rate; what one does not use, the
other gets). Extra patients in flight cost little: they wait their turn at the budget in arrival order.
`cap` bounds it (`OuraResource.max_concurrent_patients`): threads, connections and memory per patient.

Written by hand, and why: it is a moving average and one multiplication. Adaptive-concurrency libraries
(Netflix's concurrency-limits, its Python ports) tune a limit from latency growth under *server* overload,
which is not our problem: Oura's limit is a rate we already know and pace to.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

# Before anything was measured: about what real Oura answers in, plus a little of our own work.
INITIAL_CYCLE_S = 0.35
# A gap this long between two requests of one thread is not a cycle: the thread sat idle in its pool
# (fewer patients were wanted in flight) or the run paused on a 429's Retry-After.
IDLE_GAP_S = 30.0


@dataclass
class InFlightTarget:
    """Patients to keep in flight for a given request rate, from the request cycles observed (thread-safe)."""

    headroom: float = 1.5
    smoothing: float = 0.1
    initial_cycle_s: float = INITIAL_CYCLE_S
    idle_gap_s: float = IDLE_GAP_S
    _cycle_s: float | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.headroom < 1 or not 0 < self.smoothing <= 1 or self.initial_cycle_s <= 0:
            raise ValueError(
                f"InFlightTarget needs headroom >= 1, 0 < smoothing <= 1, a positive cycle: {self}"
            )

    @property
    def cycle_s(self) -> float:
        """The smoothed cycle: seconds a request occupies its patient (outside the budget's wait)."""
        with self._lock:
            return self.initial_cycle_s if self._cycle_s is None else self._cycle_s

    def observe(self, cycle_s: float) -> bool:
        """One request's cycle; returns False (and ignores it) when it is an idle gap or not a duration."""
        if not math.isfinite(cycle_s) or cycle_s < 0 or cycle_s > self.idle_gap_s:
            return False
        with self._lock:
            previous = self._cycle_s
            self._cycle_s = cycle_s if previous is None else previous + self.smoothing * (cycle_s - previous)
        return True

    def target(self, rate_per_s: float, cap: int) -> int:
        """rate x cycle x headroom patients, at least 1 and at most `cap`."""
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        wanted = rate_per_s * self.cycle_s * self.headroom
        if not math.isfinite(wanted):
            return cap
        return max(1, min(cap, math.ceil(wanted)))
