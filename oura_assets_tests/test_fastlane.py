"""The fast lane: the queue signal that keeps the request sensor cheap, and the API's first-data lane that
executes a new patient's (or a webhook's) short run in process on the Dagster instance."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from oura_assets import ledger
from oura_assets import warehouse as wh
from oura_assets.api.first_data import FirstDataLane, FirstDataRun, lane_enabled
from oura_assets.config import Settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.partitions import SYNC_IDS_TAG, TRIGGER_TAG
from oura_assets.defs.sensors import PRIORITY_TAG, QueueCursor
from oura_assets_tests.support import query


def evaluate_request_sensor(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    definitions = load_defs()
    sensor = definitions.resolve_sensor_def("oura_sync_requests")
    with dg.build_sensor_context(
        instance=instance, resources=definitions.resources, cursor=cursor
    ) as context:
        return sensor.evaluate_tick(context)


def queue(settings: Settings, patient_id: str, days: int) -> str:
    today = datetime.now(UTC).date()
    with wh.Warehouse(settings.warehouse_path).transaction("test: queue") as conn:
        sync_id = ledger.request_sync(
            conn, patient_id=patient_id, start_day=today - timedelta(days=days - 1), end_day=today
        )
    return sync_id


def test_request_sensor_reads_the_queue_only_when_the_signal_moved(
    pipeline_env: Settings, connect_patient
) -> None:
    connect_patient("patient-q")
    short, long = queue(pipeline_env, "patient-q", 3), queue(pipeline_env, "patient-q", 30)
    instance = dg.DagsterInstance.ephemeral()
    stamp = wh.sync_queue_stamp(pipeline_env.warehouse_path)
    # The signal has not moved since the last look and the periodic check is not due: the queue is not read.
    quiet = evaluate_request_sensor(instance, QueueCursor(stamp=stamp, checked=time.time()).serialize())
    assert quiet.run_requests == [] and "did not move" in (quiet.skip_message or "")
    time.sleep(0.01)
    wh.signal_sync_queued(pipeline_env.warehouse_path)
    moved = evaluate_request_sensor(instance, QueueCursor(stamp=stamp, checked=time.time()).serialize())
    by_key = {r.run_key: r for r in moved.run_requests}
    assert set(by_key) == {short, long}
    # The short (first-data or webhook) range goes first in the run queue.
    assert by_key[short].tags[PRIORITY_TAG] == "1" and by_key[long].tags[PRIORITY_TAG] == "0"
    assert QueueCursor.parse(moved.cursor).stamp == wh.sync_queue_stamp(pipeline_env.warehouse_path)
    # A stale cursor (the periodic check due) reads the queue although the signal did not move.
    due = evaluate_request_sensor(instance, QueueCursor(stamp=moved and QueueCursor.parse(moved.cursor).stamp,
                                                        checked=time.time() - 3600).serialize())  # fmt: skip
    assert {r.run_key for r in due.run_requests} == {short, long}


def test_lane_is_on_for_serve_only_with_a_dagster_home() -> None:
    assert not lane_enabled({})
    assert lane_enabled({"DAGSTER_HOME": "/x"})
    assert not lane_enabled({"DAGSTER_HOME": "/x", "OURA_ASSETS_FIRST_DATA_INLINE": "0"})


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_first_data_lane_runs_the_reserved_request_as_a_dagster_run(
    pipeline_env: Settings, connect_patient, dagster_home: Path
) -> None:
    connect_patient("patient-f")
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    store = wh.Warehouse(pipeline_env.warehouse_path)
    with store.transaction("test: first-data request") as conn:
        sync_id = ledger.request_sync(conn, patient_id="patient-f", start_day=start, end_day=today)
        ledger.reserve_request(conn, sync_id)
    lane = FirstDataLane(store)
    try:
        instance = dg.DagsterInstance.get()
        # Reserved: the request sensor leaves it to the lane.
        assert evaluate_request_sensor(instance, None).run_requests == []
        run_id = lane.submit(FirstDataRun("patient-f", sync_id, start, today)).result(timeout=120)
        assert run_id is not None
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags[TRIGGER_TAG] == "first_data" and run.tags[SYNC_IDS_TAG] == sync_id
        assert run.job_name == "oura_sync_fast_lane"
        steps = {e.step_key for e in instance.all_logs(run_id) if e.step_key}
        # The raw checks gate the patient graph (blocking); the graph's warnings wait for the full run.
        assert "oura_raw__daily_readiness_checks" in steps
        assert "patient_graph__wearable_data" in steps
        assert not any(s.startswith("patient_graph__wearable_data_") for s in steps)
        # Claimed by the run under its own id; the event sensor closes it and writes the sync event.
        assert query(pipeline_env, "SELECT status, run_id FROM patient_graph.sync_requests WHERE sync_id = ?",
                     [sync_id]) == [("running", run_id)]  # fmt: skip
        definitions = load_defs()
        with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
            definitions.resolve_sensor_def("wearable_sync_events").evaluate_tick(context)
        assert query(
            pipeline_env, "SELECT status FROM patient_graph.sync_requests WHERE sync_id = ?", [sync_id]
        ) == [("success",)]
        ((newest, days_outside),) = query(
            pipeline_env,
            "SELECT max(day), count(*) FILTER (WHERE day < ?) FROM patient_graph.wearable_data "
            "WHERE patient_id = 'patient-f'",
            [start],
        )
        assert newest is not None and newest >= start and days_outside == 0
        # The analytics snapshot is left to the 30-day run that follows.
        assert not pipeline_env.analytics_path.exists()
    finally:
        lane.close()


def test_first_data_lane_gives_the_request_back_to_the_queue_when_the_run_cannot_start(
    pipeline_env: Settings, connect_patient, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect_patient("patient-g")
    today = datetime.now(UTC).date()
    store = wh.Warehouse(pipeline_env.warehouse_path)
    with store.transaction("test: first-data request") as conn:
        sync_id = ledger.request_sync(conn, patient_id="patient-g", start_day=today, end_day=today)
        ledger.reserve_request(conn, sync_id)
    before = wh.sync_queue_stamp(pipeline_env.warehouse_path)
    lane = FirstDataLane(store)

    def broken() -> None:
        raise RuntimeError("no Dagster instance here")

    monkeypatch.setattr(lane, "_definitions", broken)
    try:
        assert lane.submit(FirstDataRun("patient-g", sync_id, today, today)).result(timeout=30) is None
    finally:
        lane.close()
    assert query(
        pipeline_env, "SELECT status FROM patient_graph.sync_requests WHERE sync_id = ?", [sync_id]
    ) == [("queued",)]
    assert wh.sync_queue_stamp(pipeline_env.warehouse_path) != before
    requests = evaluate_request_sensor(dg.DagsterInstance.ephemeral(), None).run_requests
    assert [r.run_key for r in requests] == [sync_id]


def _lane_receiver(settings: Settings) -> tuple[FirstDataLane, list[FirstDataRun], object]:
    """A webhook receiver whose lane records the runs it is given instead of executing them."""
    from oura_assets.api.webhooks import WebhookReceiver
    from oura_assets.oura.client import OuraClient
    from oura_assets.oura.oauth import OuraOAuthApp
    from oura_assets.tokens import PatientTokens, TokenCipher

    store = wh.Warehouse(settings.warehouse_path)

    def client_for(patient_id: str) -> OuraClient:
        tokens = PatientTokens(
            patient_id=patient_id,
            warehouse=store,
            cipher=TokenCipher(settings.token_keys),
            oauth_app=OuraOAuthApp.from_settings(settings),
            lock_dir=settings.lock_dir,
        )
        return OuraClient(settings.api_base_url, tokens)

    lane = FirstDataLane(store, client_for)
    submitted: list[FirstDataRun] = []
    lane.submit = submitted.append  # type: ignore[method-assign,assignment]
    return lane, submitted, WebhookReceiver(settings=settings, warehouse=store, lane=lane)


def _create_event(patient, object_id: str) -> object:
    from oura_assets.api.webhooks import WebhookEvent
    from oura_assets.simulator.data.users import profile

    return WebhookEvent(
        event_type="create",
        data_type="daily_activity",
        object_id=object_id,
        event_time=datetime.now(UTC),
        user_id=profile(patient.ring_user).user_id,
    )


def test_webhook_create_is_located_by_a_single_document_fetch_and_narrowed_to_its_day(
    pipeline_env: Settings, connect_patient
) -> None:
    from oura_assets.simulator.data.queries import documents_for_day

    patient = connect_patient("patient-l")
    now = datetime.now(UTC)
    doc = next(
        d for back in range(1, 10) for d in documents_for_day(patient.ring_user, "daily_activity",
                                                              now.date() - timedelta(days=back), now)
    )  # fmt: skip
    lane, submitted, receiver = _lane_receiver(pipeline_env)
    answer = receiver.receive(_create_event(patient, doc["id"]))
    assert answer["status"] == "sync_queued" and answer["startDate"] != answer["endDate"]
    (run,) = submitted
    assert run.trigger == "webhook" and run.lookup == ("daily_activity", doc["id"])
    # Reserved for the lane: the sensor does not launch it.
    assert query(pipeline_env, "SELECT status FROM patient_graph.sync_requests") == [("running",)]
    located = lane._locate(run)
    day = datetime.fromisoformat(doc["day"]).date()
    assert (located.start, located.end) == (day, day)
    assert query(pipeline_env, "SELECT start_day, end_day FROM patient_graph.sync_requests") == [(day, day)]
    assert query(pipeline_env, "SELECT action FROM patient_graph.webhook_events") == [(wh.LOOKUP_FOUND,)]


def test_webhook_document_that_answers_404_right_after_its_event_falls_back_to_the_days_around_it(
    pipeline_env: Settings, connect_patient
) -> None:
    patient = connect_patient("patient-m")
    lane, submitted, receiver = _lane_receiver(pipeline_env)
    # Oura announced a document it does not serve yet: the simulator answers 404 for this id.
    answer = receiver.receive(_create_event(patient, "00000000-0000-4000-8000-00000000beef"))
    (run,) = submitted
    located = lane._locate(run)
    assert (located.start, located.end) == (run.start, run.end)
    assert (located.start.isoformat(), located.end.isoformat()) == (answer["startDate"], answer["endDate"])
    assert query(pipeline_env, "SELECT start_day, end_day FROM patient_graph.sync_requests") == [
        (run.start, run.end)
    ]
    assert query(pipeline_env, "SELECT action FROM patient_graph.webhook_events") == [(wh.LOOKUP_NOT_FOUND,)]


def test_events_join_a_request_the_lane_reserved_and_then_it_is_not_narrowed(
    pipeline_env: Settings, connect_patient
) -> None:
    patient = connect_patient("patient-n")
    lane, submitted, receiver = _lane_receiver(pipeline_env)
    first = receiver.receive(_create_event(patient, "00000000-0000-4000-8000-0000000000a1"))
    second = receiver.receive(_create_event(patient, "00000000-0000-4000-8000-0000000000a2"))
    # One phone sync, one run: the second event joins the reserved, not yet started request.
    assert second["syncId"] == first["syncId"] and len(submitted) == 1
    located = lane._locate(submitted[0])
    assert (located.start, located.end) == (submitted[0].start, submitted[0].end)
    assert query(pipeline_env, "SELECT count(*) FROM patient_graph.sync_requests") == [(1,)]
