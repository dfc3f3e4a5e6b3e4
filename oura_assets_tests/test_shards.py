"""Shards: the stable split of the patients, the nightly schedule's N runs, and a shard run's claims, rebuild
and recorded outcome touching only its own patients (the concurrent runs are in test_shard_runs.py)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oura_assets import cli, ledger
from oura_assets import warehouse as wh
from oura_assets.config import ConfigError, load_settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.partitions import SHARD_TAG, run_shard
from oura_assets.defs.sensors import finished_run
from oura_assets.shards import MAX_SHARDS, Shard, shard_number
from oura_assets.sync import claim_patients
from oura_assets_tests.support import query, run_sync

NOW = datetime(2024, 6, 20, 12, tzinfo=UTC)
patient_ids = st.lists(st.text(min_size=1, max_size=40), unique=True, max_size=60)


@given(patients=patient_ids, count=st.integers(1, MAX_SHARDS))
def test_every_patient_is_in_exactly_one_shard(patients, count):
    shards = Shard.all(count)
    chosen = [s.select(patients) for s in shards]
    assert sorted(p for part in chosen for p in part) == sorted(patients)
    for patient in patients:
        assert [s for s in shards if s.holds(patient)] == [Shard(shard_number(patient, count), count)]


@given(patients=patient_ids, newcomers=patient_ids, count=st.integers(1, 8))
def test_a_patients_shard_stays_when_others_connect(patients, newcomers, count):
    for shard in Shard.all(count):
        before = shard.select(patients)
        after = shard.select([*patients, *(n for n in newcomers if n not in patients)])
        assert [p for p in after if p in patients] == before


def test_the_assignment_is_the_same_in_every_process():
    # sha256 of the id, not Python's hash() (salted per interpreter): pinned, so any process or host agrees.
    assert [shard_number(f"patient-{n}", 3) for n in range(6)] == [3, 3, 1, 2, 3, 1]
    assert shard_number("patient-0", 1) == 1


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0", "1/65", "", "1/3/5"])
def test_a_malformed_shard_is_refused_with_the_form_it_takes(text):
    with pytest.raises(ValueError, match=r"i/N"):
        Shard.parse(text)
    with pytest.raises(ValueError, match=SHARD_TAG):
        run_shard({SHARD_TAG: text})


def test_shard_round_trips_through_its_tag():
    assert run_shard({SHARD_TAG: " 2/3 "}) == Shard(2, 3)
    assert str(Shard(2, 3)) == "2/3"
    assert run_shard({}) is None


def test_shard_count_and_budget_settings(monkeypatch):
    assert load_settings({}).shards == 1
    assert load_settings({}).rate_budget is None
    assert load_settings({"OURA_ASSETS_SHARDS": "4"}).shards == 4
    with pytest.raises(ConfigError, match="OURA_ASSETS_SHARDS"):
        load_settings({"OURA_ASSETS_SHARDS": "0"})
    dsn = "dbname=oura host=db.internal password=hunter2-not-for-logs"
    assert load_settings({"OURA_ASSETS_RATE_BUDGET": f"postgres:{dsn}"}).rate_budget == dsn
    url = "postgresql://oura@db.internal:5432/oura"
    assert load_settings({"OURA_ASSETS_RATE_BUDGET": url}).rate_budget == url
    assert load_settings({"OURA_ASSETS_RATE_BUDGET": "sqlite"}).rate_budget is None
    with pytest.raises(ConfigError, match="OURA_ASSETS_RATE_BUDGET") as refused:
        load_settings({"OURA_ASSETS_RATE_BUDGET": "mysql:password=hunter2-not-for-logs"})
    assert "hunter2" not in str(refused.value)


def _nightly(monkeypatch: pytest.MonkeyPatch, shards: str | None) -> list[dg.RunRequest]:
    if shards is None:
        monkeypatch.delenv("OURA_ASSETS_SHARDS", raising=False)
    else:
        monkeypatch.setenv("OURA_ASSETS_SHARDS", shards)
    schedule = load_defs().resolve_schedule_def("sync_wearables_daily")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 6, 20, 3, tzinfo=UTC))
    return list(schedule.evaluate_tick(context).run_requests or [])


def test_the_nightly_schedule_starts_one_run_per_shard(pipeline_env, monkeypatch):
    (single,) = _nightly(monkeypatch, None)
    assert single.run_key == "nightly-2024-06-19" and SHARD_TAG not in single.tags

    requests = _nightly(monkeypatch, "3")
    assert [r.tags[SHARD_TAG] for r in requests] == ["1/3", "2/3", "3/3"]
    assert len({r.run_key for r in requests}) == 3
    for request in requests:
        assert request.tags["dagster/asset_partition_range_start"] == "2024-06-16"
        assert request.tags["dagster/asset_partition_range_end"] == "2024-06-19"
        assert request.run_key.startswith("nightly-2024-06-19-shard-")


def _connect(conn, patient_id: str) -> None:
    wh.upsert_connection(
        conn,
        patient_id,
        oura_user_id=None,
        scopes=["daily"],
        access_token_enc="enc-a",
        refresh_token_enc="enc-r",
        expires_at=NOW + timedelta(days=1),
        connected_at=NOW,
    )


PATIENTS = [f"patient-{n}" for n in range(12)]


@pytest.fixture
def store(tmp_path: Path) -> wh.Warehouse:
    store = wh.Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=20)
    with store.transaction("test: connect") as conn:
        for patient in PATIENTS:
            _connect(conn, patient)
    return store


def test_shard_runs_claim_every_active_patient_once(store):
    claimed = [claim_patients(store, run_id=f"run-{s.number}", shard=s) for s in Shard.all(3)]
    assert all(claimed), claimed  # each shard has someone, so the split is not trivially one-sided
    assert sorted(p for part in claimed for p in part) == sorted(PATIENTS)


def test_a_shard_run_that_died_early_fails_only_its_own_patients(store):
    shard = Shard(2, 3)
    run = ledger.FinishedRun(
        run_id="run-2",
        succeeded=False,
        ended="FAILURE",
        start_day="2024-06-10",
        end_day="2024-06-12",
        shard=shard,
    )
    with store.transaction("test: record") as conn:
        assert ledger.record_run_outcome(conn, run) == len(shard.select(PATIENTS))
    events = query(store.path, "SELECT patient_id FROM patient_graph.patient_events ORDER BY ALL")
    assert [p for (p,) in events] == sorted(shard.select(PATIENTS))


def test_a_run_with_a_malformed_shard_tag_syncs_nobody_and_is_recorded_for_nobody(
    pipeline_env, connect_patient
):
    connect_patient("patient-a")
    result = run_sync(date(2024, 6, 10), date(2024, 6, 11), tags={SHARD_TAG: "4/3"})
    assert not result.success
    assert query(pipeline_env, "SELECT count(*) FROM patient_graph.sync_results") == [(0,)]
    # What the event sensor makes of the finished run: nobody's, so no event (not a failure for everyone).
    run = finished_run(result.dagster_run)
    assert run.meant_for_nobody and run.shard is None
    with wh.Warehouse.from_settings(pipeline_env).transaction("test: record") as conn:
        assert ledger.record_run_outcome(conn, run) == 0
    assert query(
        pipeline_env, "SELECT count(*) FROM patient_graph.patient_events WHERE event_type = 'wearable_sync'"
    ) == [(0,)]


def test_the_backfill_command_starts_each_shard_as_a_tagged_run_of_the_range(capsys):
    args = argparse.Namespace(start=date(2024, 6, 10), end=date(2024, 6, 16))
    command = cli._shard_run_command("dagster", args, "2/3")
    assert command[:7] == ["dagster", "job", "execute", "-m", "oura_assets.definitions", "-j", "oura_sync"]
    assert json.loads(command[command.index("--tags") + 1]) == {
        "dagster/asset_partition_range_start": "2024-06-10",
        "dagster/asset_partition_range_end": "2024-06-16",
        SHARD_TAG: "2/3",
        "oura_assets/trigger": "backfill",
    }
    # A shard count or shard that names no shards is refused before anything runs (0 would mean "all").
    for flags in (["--shards", "0"], ["--shards", "65"], ["--shard", "3/2"]):
        assert cli.main(["backfill", "2024-06-10", "2024-06-16", *flags]) == 2
        assert "oura-assets backfill:" in capsys.readouterr().err
