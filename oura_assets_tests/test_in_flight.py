"""How many patients a run keeps in flight (`oura.concurrency.InFlightTarget`): pure arithmetic, no timing."""

from __future__ import annotations

import math

import pytest

from oura_assets.oura.concurrency import INITIAL_CYCLE_S, InFlightTarget


def test_before_any_cycle_is_seen_the_target_assumes_ouras_latency_plus_a_little():
    target = InFlightTarget(headroom=1.5)
    assert target.cycle_s == INITIAL_CYCLE_S
    assert target.target(18.0, 64) == math.ceil(18 * INITIAL_CYCLE_S * 1.5)


@pytest.mark.parametrize(
    ("rate", "cycle", "cap", "expected"),
    [
        (18.0, 0.3, 64, 9),  # Little's law: 18/s x 0.3 s = 5.4 in flight, x 1.5 headroom
        (18.0, 1.0, 64, 27),  # a slow warehouse lengthens the cycle just as a slow Oura does
        (18.0, 1.0, 16, 16),  # bounded by the cap
        (15.0, 0.03, 64, 1),  # at least one
        (0.5, 0.3, 64, 1),
    ],
)
def test_the_target_is_rate_times_cycle_times_headroom_within_one_and_the_cap(rate, cycle, cap, expected):
    target = InFlightTarget(headroom=1.5, smoothing=1.0)
    assert target.observe(cycle)
    assert target.target(rate, cap) == expected


def test_the_cycle_is_smoothed_so_one_slow_request_moves_it_a_little():
    target = InFlightTarget(smoothing=0.1)
    target.observe(0.3)
    target.observe(1.3)
    assert target.cycle_s == pytest.approx(0.4)
    for _ in range(200):
        target.observe(1.0)
    assert target.cycle_s == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("gap", [45.0, -1.0, float("nan"), float("inf")])
def test_idle_gaps_and_nonsense_are_not_cycles(gap):
    target = InFlightTarget(smoothing=1.0, idle_gap_s=30.0)
    target.observe(0.5)
    assert not target.observe(gap)
    assert target.cycle_s == 0.5


def test_a_rate_that_is_not_finite_asks_for_the_cap_and_bad_settings_are_refused():
    assert InFlightTarget().target(float("inf"), 12) == 12
    with pytest.raises(ValueError, match="cap"):
        InFlightTarget().target(18.0, 0)
    with pytest.raises(ValueError, match="headroom"):
        InFlightTarget(headroom=0.5)
    with pytest.raises(ValueError, match="smoothing"):
        InFlightTarget(smoothing=0)
