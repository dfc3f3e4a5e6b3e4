"""The Oura budget shared through PostgreSQL (OURA_ASSETS_RATE_BUDGET=postgres:...), as runs on several hosts
use it: against a real throwaway server, with real processes; counts and shares, no wall-clock bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oura_assets.config import load_settings
from oura_assets.oura.rate_budget import RateBudget, application_key
from oura_assets.oura.rate_budget_postgres import PostgresBudgetState, RateBudgetUnavailable
from oura_assets_tests.support import peak_in_window, shares_while_all_active


@pytest.fixture
def budget_dsn(postgres_budget: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OURA_CLIENT_ID", "client-a")
    return postgres_budget


def _budget(dsn: str, client: str = "client-a", **pacing) -> RateBudget:
    return RateBudget(store=PostgresBudgetState(dsn, application=application_key(client)), **pacing)


def test_a_limit_learned_on_one_host_paces_every_host_of_the_application(budget_dsn):
    with _budget(budget_dsn) as first, _budget(budget_dsn) as second:
        assert second.limit() == (5000, 300.0)
        first.observe(429, {"Retry-After": "0", "X-RateLimit-Limit": "20", "X-RateLimit-Window": "1"}, 0.3)
        assert second.limit() == (20, 1.0)
    with _budget(budget_dsn, "client-b") as other_app:
        assert other_app.limit() == (5000, 300.0)
    # The settings pick the same store: what a run's resource builds.
    with RateBudget.from_settings(load_settings(require=())) as configured:
        assert configured.path is None and configured.limit() == (20, 1.0)


def test_a_429_pauses_every_host_in_the_servers_time(budget_dsn):
    with _budget(budget_dsn) as first, _budget(budget_dsn) as second:
        first.observe(429, {"Retry-After": "1"}, 0.1)
        began = time.monotonic()
        second.acquire()
        assert time.monotonic() - began >= 0.8


def test_a_dropped_budget_connection_is_reopened(budget_dsn, postgres_server):
    dbname = budget_dsn.split()[0].removeprefix("dbname=")
    with _budget(budget_dsn) as budget:
        budget.acquire()
        ours = f"datname = '{dbname}' AND application_name = 'oura-assets rate budget'"
        killed = postgres_server.psql(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {ours}"  # noqa: S608
        )
        assert int(killed) >= 1
        budget.acquire()
        assert budget.requests == 2


def test_an_unreachable_budget_names_the_server_never_the_password():
    dsn = "dbname=nowhere host=127.0.0.1 port=1 user=oura password=hunter2-not-for-logs connect_timeout=2"
    with pytest.raises(RateBudgetUnavailable) as refused:
        PostgresBudgetState(dsn, application="x")
    assert "127.0.0.1:1/nowhere" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_three_processes_on_one_postgres_budget_stay_within_the_limit_and_share_it_fairly(
    budget_dsn, tmp_path: Path
):
    limit, window_s, share, turns = 20, 1.0, 0.8, 40
    spec = f"{turns},{limit},{window_s},{share}"
    outs = [tmp_path / f"shard-{n}.json" for n in range(3)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "oura_assets_tests.rate_budget_worker", f"--acquire={spec}", str(out)],
            env=dict(os.environ),
        )
        for out in outs
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    taken = [json.loads(out.read_text())["turns"] for out in outs]

    # Paced at 16/s with a burst of 2: no window of a second ever held more than Oura's 20.
    assert peak_in_window([t for shard in taken for t in shard], window_s) <= limit
    # While all three wanted turns, each got about a third (one turn per process at the shared row).
    shares = shares_while_all_active(taken)
    assert all(0.2 <= s <= 0.47 for s in shares), shares
