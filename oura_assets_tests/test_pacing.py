"""The budget's pacing, counted on a fake clock: never a full Oura window once the limit is known, and close
to the paced share of it; and the in-flight target a run starts with at Oura's latency.

Nothing here sleeps or times anything: the shared row is driven through `book` with the store's clock
replaced, so each test counts which requests go at which (fake) millisecond.
"""

from __future__ import annotations

import math

import pytest

from oura_assets.oura.concurrency import InFlightTarget
from oura_assets.oura.rate_budget import RateBudget
from oura_assets_tests import support


class _FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now(self) -> int:
        return self.ms


def _allowed(budget: RateBudget, limit: int, window_s: float, seconds: float, step_ms: int) -> list[int]:
    """Milliseconds at which requests went, each asked for `step_ms` after the previous one went, over
    `seconds`."""
    clock = _FakeClock(1_000_000_000)
    budget._state.default_clock = clock  # type: ignore[misc]
    rates = [budget._rate(limit, window_s)]
    end, went = clock.ms + seconds * 1000, []
    while clock.ms < end:
        clock.ms += budget._state.book(rates)
        went.append(clock.ms)
        clock.ms += step_ms
    return went


@pytest.mark.parametrize(("limit", "window_s", "seconds"), [(20, 1.0, 20.0), (5000, 300.0, 900.0)])
def test_a_known_limit_is_paced_below_every_rolling_window_and_close_to_its_share(
    tmp_path, limit, window_s, seconds
):
    """Requests asked for as fast as possible (1 ms after the previous one went, or 20 ms for the 5-minute
    window) from a fresh budget: no rolling window of Oura's ever holds `limit` of them (no 429 once the
    limit is known), and over the run they go at the paced share (0.9) of the limit, less only the first
    window's burst."""
    with RateBudget(tmp_path / "b.sqlite", limit=limit, window_s=window_s) as budget:
        went = _allowed(budget, limit, window_s, seconds, step_ms=1 if window_s < 10 else 20)
    assert support.peak_in_window(went, round(window_s * 1000)) < limit
    paced = math.floor(limit * 0.9) / window_s
    assert len(went) >= paced * seconds * 0.98


def test_the_in_flight_target_covers_ouras_latency_from_the_first_patient():
    """At the bench's limit (20/s, paced at 18/s) and Oura's 300 ms, a run needs 18 x 0.3 = 5.4 requests in
    flight; it starts with more (before any cycle is seen) and stays above once cycles of 0.3 s come in,
    also while it still paces at the configured 15/s before the 429 that teaches it the limit."""
    target = InFlightTarget()
    assert target.target(18.0, 32) >= math.ceil(18 * 0.3) + 2
    assert target.target(15.0, 32) >= math.ceil(15 * 0.3) + 2
    for _ in range(50):
        target.observe(0.3)
    assert target.target(18.0, 32) >= math.ceil(18 * 0.3)
    # A patient's landing (a second under the warehouse lock) once per 19 requests raises it, not lowers it.
    for _ in range(5):
        for _ in range(18):
            target.observe(0.3)
        target.observe(1.3)
    assert target.target(18.0, 32) > math.ceil(18 * 0.3 * 1.5)


def test_turns_go_in_the_order_asked_even_to_a_process_that_wakes_late(tmp_path):
    """Three processes take turns at one budget; one of them (a process short of CPU) always wakes 40 ms
    after its slot and asks again only then. A budget that lets the first to ask after a slot opens have it
    gives the late one ever fewer turns; a booked slot stays its own, so each gets a third."""
    limit, window_s = 20, 1.0
    clock = _FakeClock(1_000_000_000)
    stores = []
    for _ in range(3):
        budget = RateBudget(tmp_path / "b.sqlite", limit=limit, window_s=window_s, share=0.8)
        budget._state.default_clock = clock  # type: ignore[misc]
        stores.append(budget)
    rates = [stores[0]._rate(limit, window_s)]
    lateness = [0, 0, 40]
    asks = [clock.ms, clock.ms + 1, clock.ms + 2]  # when each process next asks for a turn
    went: list[list[int]] = [[], [], []]
    try:
        while clock.ms < 1_000_000_000 + 30_000:
            n = min(range(3), key=lambda k: asks[k])
            clock.ms = asks[n]
            slot = clock.ms + stores[n]._state.book(rates)
            went[n].append(slot)
            asks[n] = slot + lateness[n]
    finally:
        for budget in stores:
            budget.close()
    shares = support.shares_while_all_active(went)
    assert all(abs(s - 1 / 3) <= 0.02 for s in shares), shares
    assert support.peak_in_window([t for turns in went for t in turns], round(window_s * 1000)) <= limit
