"""The host-wide Oura request budget: learned from Oura's headers, shared by processes, fair between runs.

The multi-process cases run real syncs in two OS processes against the simulator with a tight application
limit and count requests and 429s; nothing here asserts on wall-clock durations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from oura_assets.config import Settings
from oura_assets.oura.rate_budget import RateBudget, RateLimitHeaders, budget_path
from oura_assets_tests.support import stop_process

LIMIT = {"limit": 20, "window_s": 1}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "Retry-After": "7",
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Window": "300",
                "X-RateLimit-Tier": "application",
            },
            RateLimitHeaders(5000, 300.0, 7.0, "application"),
        ),
        ({"X-RateLimit-Reset": "1010"}, RateLimitHeaders(None, None, 10.0, None)),
        ({"Retry-After": "soon", "X-RateLimit-Limit": "-3"}, RateLimitHeaders(None, None, None, None)),
        ({"Retry-After": "Thu, 01 Jan 1970 00:16:50 GMT"}, RateLimitHeaders(None, None, 10.0, None)),
        ({}, RateLimitHeaders()),
    ],
)
def test_rate_limit_headers_are_read_as_oura_documents_them(headers, expected):
    assert RateLimitHeaders.parse(headers, now=1000.0) == expected


def test_a_limit_learned_from_a_429_is_seen_by_every_budget_of_the_application(tmp_path):
    path = budget_path(tmp_path, "client-a")
    with RateBudget(path) as first, RateBudget(path) as second:
        assert first.limit() == (5000, 300.0)
        first.observe(429, {"Retry-After": "0", "X-RateLimit-Limit": "20", "X-RateLimit-Window": "1"}, 0.3)
        assert second.limit() == (20, 1.0)
        assert first.rate_limited == 1
    with RateBudget(budget_path(tmp_path, "client-b")) as other_app:
        assert other_app.limit() == (5000, 300.0)


def test_an_access_token_tier_429_does_not_teach_the_application_limit(tmp_path):
    with RateBudget(tmp_path / "budget.sqlite") as budget:
        budget.observe(
            429,
            {
                "Retry-After": "0",
                "X-RateLimit-Limit": "3",
                "X-RateLimit-Window": "1",
                "X-RateLimit-Tier": "access_token",
            },
            0.1,
        )
        assert budget.limit() == (5000, 300.0)


def test_a_learned_limit_expires_back_to_the_configured_one(tmp_path):
    now = [1_000_000.0]
    with RateBudget(tmp_path / "budget.sqlite", clock=lambda: now[0]) as budget:
        budget.observe(200, {"X-RateLimit-Limit": "20", "X-RateLimit-Window": "1"}, 0.1)
        assert budget.limit() == (20, 1.0)
        now[0] += 2 * 86_400
        assert budget.limit() == (5000, 300.0)


def test_workers_follow_rate_times_the_request_cycle_each_thread_shows(tmp_path):
    tick = [100.0]
    with RateBudget(
        tmp_path / "budget.sqlite", limit=1000, window_s=1.0, share=0.9, cycle_clock=lambda: tick[0]
    ) as budget:
        budget.observe(200, {"X-RateLimit-Limit": "20", "X-RateLimit-Window": "1"}, 0.3)
        assert budget.rate_per_s == 18
        budget.acquire()
        tick[0] += 0.9  # Oura's latency and our own work until this thread asks again
        budget.acquire()
        assert budget.suggested_workers(64) == 25  # 18 req/s x 0.9 s x 1.5 = 24.3
        assert budget.suggested_workers(16) == 16
        tick[0] += 5.0  # a 429: the wait for its Retry-After is no cycle
        budget.observe(429, {"Retry-After": "0"}, 0.3)
        budget.acquire()
        assert budget.suggested_workers(64) == 25


def test_a_429_pauses_the_next_request_of_another_budget(tmp_path):
    path = tmp_path / "budget.sqlite"
    with RateBudget(path) as first, RateBudget(path) as second:
        first.observe(429, {"Retry-After": "1"}, 0.1)
        row = second._state.row()
        assert row[4] > time.time() + 0.5  # paused_until, shared through the file
        second.acquire()
        assert time.time() >= row[4]


def _spawn(
    settings: Settings,
    out: Path,
    run_id: str,
    start: date,
    end: date,
    patients: list[str],
    stamps: Path | None = None,
):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oura_assets_tests.rate_budget_worker",
            *([f"--stamps={stamps}"] if stamps else []),
            str(out),
            run_id,
            str(start),
            str(end),
            *patients,
        ],
        env=dict(os.environ),
    )


def _report(process: subprocess.Popen, out: Path) -> dict:
    assert process.wait(timeout=240) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_share_one_budget_under_a_tight_limit_with_few_429s(
    pipeline_env, connect_patient, simulator, tmp_path
):
    patients = [f"patient-{n}" for n in range(4)]
    for patient in patients:
        connect_patient(patient)
    simulator.control.set_faults(rate_limit=LIMIT)
    simulator.control.reset_stats()
    start, end = date(2024, 5, 10), date(2024, 6, 12)
    runs = [
        _spawn(pipeline_env, tmp_path / f"run-{n}.json", f"run-{n}", start, end, patients[n * 2 : n * 2 + 2])
        for n in range(2)
    ]
    reports = [_report(p, tmp_path / f"run-{n}.json") for n, p in enumerate(runs)]

    assert all(set(r["statuses"].values()) == {"success"} for r in reports), reports
    requests = sum(r["requests"] for r in reports)
    rate_limited = sum(r["rate_limited"] for r in reports)
    assert requests > 50
    # While the limit is being learned (the configured 5,000 per 5 minutes is far above this simulator's
    # 20 per second), the requests already in flight may be refused; once it is learned, hardly any.
    in_flight_at_learning = 2 * 16
    assert rate_limited <= in_flight_at_learning + 0.01 * requests, (rate_limited, requests)
    # The processes' own counts are Oura's (the simulator's) counts.
    answered = simulator.control.stats()["requests"]
    assert sum(counts.get("429", 0) for counts in answered.values()) == rate_limited


def _sent(stamps: Path) -> list[float]:
    return (
        [float(line) for line in stamps.read_text().splitlines() if line.strip()] if stamps.exists() else []
    )


@pytest.mark.slow
def test_a_new_patients_sync_lands_while_a_backfill_in_another_process_keeps_going(
    pipeline_env, connect_patient, simulator, tmp_path
):
    backfill = [f"backfill-{n}" for n in range(6)]
    for patient in [*backfill, "newcomer"]:
        connect_patient(patient)
    simulator.control.set_faults(rate_limit=LIMIT)
    stamps = tmp_path / "backfill.stamps"
    long = _spawn(
        pipeline_env,
        tmp_path / "backfill.json",
        "backfill",
        date(2024, 1, 1),
        date(2024, 6, 30),
        backfill,
        stamps,
    )
    try:
        deadline = time.monotonic() + 120
        # The backfill has learned the limit and spends the whole budget before the newcomer arrives.
        while len(_sent(stamps)) < 60:
            assert long.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        new = _spawn(
            pipeline_env, tmp_path / "new.json", "new", date(2024, 6, 10), date(2024, 6, 12), ["newcomer"]
        )
        report = _report(new, tmp_path / "new.json")
    finally:
        # Seen once in a full suite on a loaded 2-core host: the backfill (no SIGTERM handler) was not gone
        # 60 s after SIGTERM. It is only this test's background load, so it is killed, not waited on.
        stop_process(long, timeout_s=60)

    assert report["statuses"] == {"newcomer": "success"}, report
    needed = report["requests"]
    began, landed = min(report["sent_at"]), report["finished_at"]
    backfill_sent = _sent(stamps)
    assert any(sent > landed for sent in backfill_sent), "the backfill ended before the newcomer landed"
    meanwhile = sum(began <= sent <= landed for sent in backfill_sent)
    # One process, one turn at the shared bucket: the two alternate, so while the newcomer sends its K
    # requests the backfill sends about K (measured 1.5-2 K). On top come the backfill's requests while the
    # newcomer waits for the warehouse lock behind the backfill's writes (up to 4.4 K measured on a loaded
    # 2-core host). Without fair turns the newcomer waits out the whole backfill (17 K to 158 K measured).
    assert meanwhile <= 6 * needed, (meanwhile, needed)
