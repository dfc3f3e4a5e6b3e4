"""Transient faults never cost data: the same range under 10% 5xx, 3% dropped connections and a tight rate
limit, with several fault seeds, lands exactly the clean run's tables (the client's retries, then the sync's
refetch passes after a cool-down)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oura_assets import warehouse as wh
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets_tests.conftest import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_REDIRECT_URI
from oura_assets_tests.support import VOLATILE, snapshot
from oura_assets_tests.test_honest_outcomes import failure_messages, results, sync_run

# The raw tables are emptied between the two runs, so each document is first seen (again) by the second one.
SEEN = VOLATILE | {"first_seen_at", "last_changed_at"}


# Several fault seeds: each test gets its own simulator whose fault dice start from that seed.
@pytest.fixture(params=[1, 2, 3], ids=lambda seed: f"seed-{seed}")
def simulator(request) -> Iterator[SimulatorServer]:
    config = SimulatorConfig(
        clients={
            TEST_CLIENT_ID: ClientRegistration(secret=TEST_CLIENT_SECRET, redirect_uris=(TEST_REDIRECT_URI,))
        },
        seed=request.param,
        # Small pages: more requests per collection, so more of them meet a fault.
        page_size={"daily_readiness": 2, "daily_sleep": 2, "sleep": 2, "daily_activity": 2, "heartrate": 100},
    )
    with SimulatorServer(config) as server:
        yield server


@pytest.mark.slow
def test_transient_faults_under_a_tight_rate_limit_land_the_clean_runs_tables(
    pipeline_env, connect_patient, simulator
):
    for n in range(2):
        connect_patient(f"patient-{n}")
    clean, _ = sync_run()
    assert clean.success
    expected = snapshot(pipeline_env, drop=SEEN)
    with wh.Warehouse(pipeline_env.warehouse_path).transaction("test: start from empty tables") as conn:
        for table in ("wearable_data", "patient_wearable_daily_stats"):
            conn.execute(f"DELETE FROM patient_graph.{table}")  # noqa: S608 (fixed names)
        for table in ("daily_readiness", "daily_sleep", "sleep", "daily_activity", "heartrate"):
            conn.execute(f"DELETE FROM oura_raw.{table}")  # noqa: S608 (fixed names)

    simulator.control.reset_stats()
    simulator.control.set_faults(error_rate=0.1, drop_rate=0.03, rate_limit={"limit": 15, "window_s": 1})
    faulty, _ = sync_run({"refetch_cool_down_s": 1.0})
    simulator.control.set_faults(error_rate=0, drop_rate=0, rate_limit=None)

    assert faulty.success, failure_messages(faulty)
    assert snapshot(pipeline_env, drop=SEEN) == expected
    assert {status for status, _ in results(pipeline_env, faulty.run_id).values()} == {"success"}
    answered = simulator.control.stats()["requests"]
    statuses = {status for counts in answered.values() for status in counts}
    # The faults did happen: the tables above came through them.
    assert "429" in statuses and any(s.startswith("5") for s in statuses), answered
