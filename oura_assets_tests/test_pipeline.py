"""End to end: Dagster runs over real partitions against the simulator on loopback, asserted with SQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from oura_assets import warehouse as wh
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.partitions import PATIENT_TAG, SYNC_IDS_TAG
from oura_assets.defs.schedules import nightly_range
from oura_assets.defs.sensors import build_event_sensor
from oura_assets.normalize import METRIC_KEYS
from oura_assets.simulator import data as simdata
from oura_assets_tests.support import (
    UNPACED,
    UNPACED_RATE_LIMIT,
    VOLATILE,
    duplicate_keys,
    failures,
    query,
    run_sync,
    snapshot,
)

START, END = date(2024, 6, 10), date(2024, 6, 16)


def sync_and_record(
    start: date = START, end: date = END, *, paced: bool = False, **tags: str
) -> tuple[dg.Definitions, dg.DagsterInstance, str]:
    """A successful `oura_sync` run over [start, end], then one tick of the sensor that records its events.

    Unpaced (`support.UNPACED`) unless `paced`: what these tests look at is what lands, not how requests are
    spread (test_pacing.py, test_rate_budget.py and bench/ are about that), and spreading a run's ~100
    requests at Oura's 15 a second is ~6 s of idle waiting a test. One test keeps the shipped pacing
    (`test_materialized_range_lands_every_table_and_a_second_run_changes_nothing`), so a run here still
    goes through the budget as deployed."""
    definitions = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    result = run_sync(
        start,
        end,
        definitions=definitions,
        instance=instance,
        tags=tags,
        run_config=None if paced else UNPACED,
    )
    assert result.success, failures(result)
    with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
        build_event_sensor()(context)
    return definitions, instance, result.run_id


def test_definitions_load_with_assets_schedule_and_sensors(pipeline_env):
    definitions = load_defs()
    keys = {key.to_user_string() for key in definitions.resolve_all_asset_keys()}
    assert {
        "oura_raw/daily_readiness",
        "oura_raw/sleep",
        "oura_raw/daily_activity",
        "oura_raw/heartrate",
        "patient_graph/wearable_data",
        "patient_graph/patient_wearable_daily_stats",
    } <= keys
    schedule = definitions.resolve_schedule_def("sync_wearables_daily")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    for name in ("wearable_sync_events", "oura_sync_requests"):
        assert definitions.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    raw = definitions.resolve_assets_def(dg.AssetKey(["oura_raw", "heartrate"]))
    assert raw.backfill_policy == dg.BackfillPolicy.single_run()


# One test, not four: the second run below was `test_materializing_twice_leaves_tables_identical`, whose own
# first run (two patients of its own) only repeated this one's, and the plain-file and no-plaintext-token
# checks were two tests of one run each (`test_warehouse_file_is_a_plain_duckdb_database`,
# `test_no_plaintext_token_in_the_warehouse_file`). Four in-process runs fewer, ~4-10 s of CPU each.
@pytest.mark.slow
def test_materialized_range_lands_every_table_and_a_second_run_changes_nothing(
    pipeline_env, connect_patient, warehouse_backend
):
    settings = pipeline_env
    patients = [connect_patient(f"patient-{n}") for n in range(3)]
    _, _, run_id = sync_and_record(paced=True)  # the shipped pacing: the run's requests go through the budget

    metric_types = {
        t for (t,) in query(settings, "SELECT DISTINCT metric_type FROM patient_graph.wearable_data")
    }
    assert metric_types == {"readiness", "sleep", "activity", "hrv"}
    days = query(
        settings, "SELECT min(day), max(day), count(DISTINCT patient_id) FROM patient_graph.wearable_data"
    )
    assert days == [(START, END, 3)]
    for metric_type, metrics in query(
        settings, "SELECT metric_type, metrics FROM patient_graph.wearable_data"
    ):
        assert sorted(json.loads(metrics)) == sorted(METRIC_KEYS[metric_type])
    for start, end in query(
        settings,
        "SELECT metrics->>'bedtimeStart', metrics->>'bedtimeEnd' FROM patient_graph.wearable_data "
        "WHERE metric_type = 'sleep' AND (metrics->>'bedtimeStart') IS NOT NULL",
    ):
        assert start.endswith("Z") and (end is None or end.endswith("Z"))
    stats = query(
        settings,
        "SELECT count(*), count(hr_samples), min(hr_min), max(hr_max) "
        "FROM patient_graph.patient_wearable_daily_stats",
    )[0]
    assert stats[0] >= 3 * 5 and stats[1] > 0 and 30 <= stats[2] <= stats[3] <= 220
    # Heart rate is fetched a day beyond each end of the range (for local days) and lands once per sample.
    dupes = query(
        settings,
        "SELECT count(*) FROM (SELECT patient_id, timestamp, source FROM oura_raw.heartrate GROUP BY ALL "
        "HAVING count(*) > 1)",
    )
    assert dupes == [(0,)]
    events = query(
        settings,
        "SELECT patient_id, payload->>'status', payload->>'runId', payload->'rows' "
        "FROM patient_graph.patient_events "
        "WHERE event_type = 'wearable_sync' ORDER BY patient_id",
    )
    assert [(p, s, r) for p, s, r, _ in events] == [(f"patient-{n}", "success", run_id) for n in range(3)]
    assert json.loads(events[0][3])["patient_graph.wearable_data"] > 0
    # A first sync finds every document new; the event says so.
    for (documents,) in query(
        settings,
        "SELECT payload->'documents' FROM patient_graph.patient_events WHERE event_type = 'wearable_sync'",
    ):
        counts = json.loads(documents)
        assert counts["new"] > 0 and counts["changed"] == counts["unchanged"] == counts["deleted"] == 0
    # Every patient-day of the range has a status, and the days without data say why.
    day_status = query(
        settings,
        "SELECT count(*), count(DISTINCT (patient_id, day)), count(reason) "
        "FROM patient_graph.wearable_day_status",
    )
    assert day_status == [(3 * 7, 3 * 7, 3 * 7)]
    synced = query(settings, "SELECT count(last_synced_at) FROM patient_graph.wearable_connections")
    assert synced == [(3,)]
    if warehouse_backend == "duckdb":
        # The warehouse is a plain DuckDB file that any DuckDB opens, and holds no token in plaintext.
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM patient_graph.patient_wearable_daily_stats"
            ).fetchone()
        assert count > 0
        raw = settings.warehouse_path.read_bytes()
        assert [p.patient_id for p in patients if p.access_token.encode() in raw] == []

    # Materializing the same range again leaves every table as it was: nothing duplicated, nothing lost.
    first = snapshot(settings)
    sync_and_record()
    assert snapshot(settings) == first
    assert sum(len(rows) for rows in first.values()) > 100
    assert duplicate_keys(settings) == {}


# A month, not a quarter: the run's Dagster bookkeeping grows with its days (an event per asset per day), and
# what this test is about is the simulator's days without the ring, which this month holds (checked below).
NOT_WORN_START, NOT_WORN_END = date(2024, 3, 1), date(2024, 3, 31)


@pytest.mark.slow
def test_days_not_worn_have_no_rows(pipeline_env, connect_patient):
    patient = connect_patient("patient-a")
    days = [NOT_WORN_START + timedelta(days=n) for n in range((NOT_WORN_END - NOT_WORN_START).days + 1)]
    off = [day for day in days if not simdata.plan(patient.ring_user, day).worn]
    assert len(off) >= 2, f"the range must hold days the simulated patient left the ring off, has {off}"
    sync_and_record(NOT_WORN_START, NOT_WORN_END)
    all_null = [
        (metric_type, day)
        for metric_type, day, metrics in query(
            pipeline_env, "SELECT metric_type, day, metrics FROM patient_graph.wearable_data"
        )
        if all(value is None for value in json.loads(metrics).values())
    ]
    assert all_null == [], "a row with no non-null value was written"
    covered = query(
        pipeline_env, "SELECT count(DISTINCT day) FROM patient_graph.patient_wearable_daily_stats"
    )[0][0]
    assert 0 < covered <= len(days) - len(off), "a day without the ring has daily stats"
    statuses = dict(
        query(pipeline_env, "SELECT status, count(*) FROM patient_graph.wearable_day_status GROUP BY ALL")
    )
    assert sum(statuses.values()) == len(days) and statuses.get("not_worn", 0) >= len(days) - covered
    landed_off = query(
        pipeline_env,
        "SELECT DISTINCT day FROM patient_graph.wearable_data WHERE day IN (SELECT unnest(?::DATE[]))",
        [off],
    )
    assert landed_off == [], "a day the ring was off has wearable data"


def test_one_patient_forbidden_while_others_land(pipeline_env, connect_patient, simulator):
    connect_patient("patient-ok")
    expired = connect_patient("patient-expired")
    simulator.control.set_faults(users={expired.ring_user: {"forbidden": True}})
    _, instance, run_id = sync_and_record()

    per_patient = dict(
        query(pipeline_env, "SELECT patient_id, count(*) FROM patient_graph.wearable_data GROUP BY ALL")
    )
    assert per_patient.get("patient-ok", 0) > 0 and "patient-expired" not in per_patient
    events = dict(
        query(
            pipeline_env,
            "SELECT patient_id, payload FROM patient_graph.patient_events WHERE event_type = 'wearable_sync'",
        )
    )
    failed = json.loads(events["patient-expired"])
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == "subscription_expired"
    assert json.loads(events["patient-ok"])["status"] == "success"
    run = instance.get_run_by_id(run_id)
    assert run.tags["oura_assets/patients_ok"] == "1" and run.tags["oura_assets/patients_failed"] == "1"


def test_refresh_rejected_marks_reconnect_required_and_others_land(pipeline_env, connect_patient, simulator):
    connect_patient("patient-ok")
    rejected = connect_patient("patient-rejected")
    simulator.control.set_faults(
        users={rejected.ring_user: {"expire_access_tokens": True, "refresh_reject": True}}
    )
    sync_and_record()
    status = dict(query(pipeline_env, "SELECT patient_id, status FROM patient_graph.wearable_connections"))
    assert status == {"patient-ok": "active", "patient-rejected": "reconnect_required"}
    kinds = query(
        pipeline_env,
        "SELECT event_type, count(*) FROM patient_graph.patient_events WHERE patient_id = 'patient-rejected' "
        "GROUP BY ALL ORDER BY ALL",
    )
    assert kinds == [("wearable_reconnect_required", 1), ("wearable_sync", 1)]
    assert query(
        pipeline_env, "SELECT count(*) FROM patient_graph.wearable_data WHERE patient_id = 'patient-ok'"
    )[0][0]


def test_expired_access_token_is_refreshed_and_rotated_pair_stored(pipeline_env, connect_patient, simulator):
    patient = connect_patient("patient-a")
    before = query(
        pipeline_env, "SELECT access_token_enc, refresh_token_enc FROM patient_graph.wearable_connections"
    )
    simulator.control.set_faults(users={patient.ring_user: {"expire_access_tokens": True}})
    sync_and_record()
    after = query(
        pipeline_env, "SELECT access_token_enc, refresh_token_enc FROM patient_graph.wearable_connections"
    )
    assert after[0][0] != before[0][0] and after[0][1] != before[0][1]
    assert query(pipeline_env, "SELECT count(*) FROM patient_graph.wearable_data")[0][0] > 0
    assert simulator.control.stats()["refresh_grants"] >= 1


def test_run_for_one_patient_syncs_only_that_patient(pipeline_env, connect_patient):
    connect_patient("patient-a")
    connect_patient("patient-b")
    with wh.Warehouse(pipeline_env.warehouse_path).transaction("test: request") as conn:
        sync_id = wh.create_sync_request(conn, patient_id="patient-b", start_day=START, end_day=END)
    sync_and_record(**{PATIENT_TAG: "patient-b", SYNC_IDS_TAG: sync_id})
    patients = query(pipeline_env, "SELECT DISTINCT patient_id FROM patient_graph.wearable_data")
    assert patients == [("patient-b",)]
    with wh.Warehouse(pipeline_env.warehouse_path).connect("test: read request") as conn:
        assert wh.get_sync_request(conn, sync_id).status == "success"


@pytest.mark.parametrize(
    ("scheduled", "lookback", "expected"),
    [
        (date(2024, 6, 20), 3, (date(2024, 6, 16), date(2024, 6, 19))),
        (date(2024, 6, 20), 0, (date(2024, 6, 19), date(2024, 6, 19))),
        (date(2024, 1, 2), 3, (date(2024, 1, 1), date(2024, 1, 1))),
    ],
    ids=["default-lookback", "no-lookback", "clamped-to-first-partition"],
)
def test_nightly_range(scheduled, lookback, expected):
    assert nightly_range(scheduled, lookback, date(2024, 1, 1)) == expected


def test_schedule_requests_one_ranged_run(pipeline_env):
    schedule = load_defs().resolve_schedule_def("sync_wearables_daily")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 6, 20, 3, tzinfo=UTC))
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.tags["dagster/asset_partition_range_start"] == "2024-06-16"
    assert request.tags["dagster/asset_partition_range_end"] == "2024-06-19"


def test_sync_request_sensor_turns_a_request_into_a_run(pipeline_env, connect_patient):
    connect_patient("patient-a")
    with wh.Warehouse(pipeline_env.warehouse_path).transaction("test: request") as conn:
        sync_id = wh.create_sync_request(conn, patient_id="patient-a", start_day=START, end_day=END)
    definitions = load_defs()
    sensor = definitions.resolve_sensor_def("oura_sync_requests")
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=definitions.resources
    ) as context:
        requests = sensor.evaluate_tick(context).run_requests
    assert [r.run_key for r in requests] == [sync_id]
    assert requests[0].tags[PATIENT_TAG] == "patient-a"
    assert requests[0].tags["dagster/asset_partition_range_start"] == START.isoformat()


def test_bad_raw_document_is_left_out_and_reported_while_the_rest_lands(pipeline_env, connect_patient):
    connect_patient("patient-a")
    sync_and_record()
    store = wh.Warehouse(pipeline_env.warehouse_path)
    with store.transaction("test: corrupt one document") as conn:
        doc_id, day = conn.execute(
            "SELECT id, day FROM oura_raw.daily_readiness WHERE patient_id = 'patient-a' ORDER BY day LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE oura_raw.daily_readiness SET document = json_merge_patch(document, ?) WHERE id = ?",
            ['{"score": "high"}', doc_id],
        )
    result = run_sync(START, END, asset_selection=[dg.AssetKey(["patient_graph", "wearable_data"])])
    assert result.success, failures(result)
    readiness_days = {
        d
        for (d,) in query(
            pipeline_env, "SELECT day FROM patient_graph.wearable_data WHERE metric_type = 'readiness'"
        )
    }
    assert day not in readiness_days and len(readiness_days) >= 3
    assert query(pipeline_env, "SELECT count(*) FROM oura_raw.daily_readiness WHERE id = ?", [doc_id]) == [
        (1,)
    ]


@pytest.mark.slow
def test_patients_fetched_concurrently_land_exactly_what_one_at_a_time_does(
    pipeline_env, connect_patient, simulator
):
    for n in range(5):
        connect_patient(f"patient-{n}")
    simulator.control.set_faults(users={"patient-3-ring": {"forbidden": True}})

    def landed(workers: int) -> dict[str, list[tuple]]:
        with wh.Warehouse(pipeline_env.warehouse_path).transaction("test: start from empty tables") as conn:
            for table in ("wearable_data", "patient_wearable_daily_stats"):
                conn.execute(f"DELETE FROM patient_graph.{table}")  # noqa: S608 (fixed names)
            for table in ("daily_readiness", "daily_sleep", "sleep", "daily_activity", "heartrate"):
                conn.execute(f"DELETE FROM oura_raw.{table}")  # noqa: S608 (fixed names)
        oura = {"rate_limit": UNPACED_RATE_LIMIT, "max_concurrent_patients": workers}
        result = run_sync(START, END, run_config={"resources": {"oura": {"config": oura}}})
        assert result.success, failures(result)
        # The raw tables were emptied above, so every document is first seen (again) by this run.
        return snapshot(pipeline_env, drop=VOLATILE | {"first_seen_at", "last_changed_at"})

    concurrent = landed(4)
    assert concurrent == landed(1)
    patients = {row[0] for row in concurrent["patient_graph.wearable_data"]}
    assert patients == {"patient-0", "patient-1", "patient-2", "patient-4"}
