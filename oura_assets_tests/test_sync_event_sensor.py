"""The `wearable_sync_events` sensor records each finished run once, and a tick with nothing new leaves the
warehouse alone: real runs on an ephemeral Dagster instance, against the simulator on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from typing import Any

import dagster as dg
import pytest

from oura_assets import ledger
from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.partitions import PATIENT_TAG, SYNC_IDS_TAG, partition_range_tags
from oura_assets.defs.resources import WarehouseResource

START, END = date(2024, 6, 10), date(2024, 6, 12)


class Runs:
    """One Dagster instance, the definitions, and the sensor ticked as the daemon does (cursor carried)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = wh.Warehouse(settings.warehouse_path)
        self.definitions = load_defs()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def requested_sync(self, patient_id: str) -> str:
        """Queue a sync as the API does and carry it out as the request sensor's run would; its sync id."""
        with self.store.transaction("test: request") as conn:
            sync_id = ledger.request_sync(conn, patient_id=patient_id, start_day=START, end_day=END)
        result = self.definitions.resolve_job_def("oura_sync").execute_in_process(
            instance=self.instance,
            tags={**partition_range_tags(START, END), PATIENT_TAG: patient_id, SYNC_IDS_TAG: sync_id},
        )
        assert result.success
        return sync_id

    def tick(self, resources: dict[str, Any] | None = None) -> dg.SensorExecutionData:
        sensor = self.definitions.resolve_sensor_def("wearable_sync_events")
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=resources or self.definitions.resources
        ) as context:
            data = sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def request(self, sync_id: str) -> wh.SyncRequestRecord:
        with self.store.connect("test: read request") as conn:
            request = wh.get_sync_request(conn, sync_id)
        assert request is not None
        return request

    def sync_events(self) -> list[tuple[Any, ...]]:
        with self.store.connect("test: read events") as conn:
            return conn.execute(
                "SELECT event_id, occurred_at, payload FROM patient_graph.patient_events "
                "WHERE event_type = 'wearable_sync' ORDER BY event_id"
            ).fetchall()


@pytest.fixture
def runs(pipeline_env: Settings) -> Runs:
    return Runs(pipeline_env)


@pytest.fixture
def warehouse_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The purpose of every warehouse connection opened (each one takes the writer lock), in order."""
    opened: list[str] = []
    connect = wh.Warehouse.connect

    def counting(self: wh.Warehouse, purpose: str, timeout_s: float | None = None):
        opened.append(purpose)
        return connect(self, purpose, timeout_s)

    monkeypatch.setattr(wh.Warehouse, "connect", counting)
    yield opened


@pytest.mark.slow
def test_event_sensor_records_a_finished_run_once_however_often_it_ticks(
    runs, connect_patient, warehouse_opens
):
    connect_patient("patient-a")
    sync_id = runs.requested_sync("patient-a")
    assert runs.request(sync_id).status == "running"

    warehouse_opens.clear()
    runs.tick()
    assert len(warehouse_opens) == 1 and warehouse_opens[0].startswith("sensor: record outcome")
    recorded, events = runs.request(sync_id), runs.sync_events()
    assert recorded.status == "success" and recorded.finished_at is not None
    assert len(events) == 1

    # The daemon ticks on, the finished run still inside the cursor's overlap: nothing is opened or written.
    warehouse_opens.clear()
    for _ in range(4):
        assert isinstance(runs.tick().skip_message, str)
    assert warehouse_opens == []
    assert runs.request(sync_id) == recorded  # finishedAt (and everything else) where the first tick put it
    assert runs.sync_events() == events

    # A cursor lost or reset sees the run again: the ledger knows it is recorded and writes nothing.
    for cursor in (None, "0"):
        runs.cursor = cursor
        runs.tick()
    assert runs.request(sync_id) == recorded
    assert runs.sync_events() == events

    # A run that finishes next is still recorded, once, and leaves the first one as it was.
    warehouse_opens.clear()
    second = runs.requested_sync("patient-a")
    warehouse_opens.clear()
    runs.tick()
    runs.tick()
    assert [p for p in warehouse_opens if p.startswith("sensor:")] == [
        f"sensor: record outcome of run {runs.request(second).run_id[:8]}"
    ]
    assert runs.request(second).status == "success"
    assert runs.request(sync_id) == recorded
    assert len(runs.sync_events()) == 2


@pytest.mark.slow
def test_event_sensor_tick_with_nothing_new_completes_while_the_warehouse_is_locked(runs, connect_patient):
    connect_patient("patient-a")
    sync_id = runs.requested_sync("patient-a")
    runs.tick()
    recorded = runs.request(sync_id)

    held, release = threading.Event(), threading.Event()

    def hold_the_writer_lock() -> None:
        with runs.store.connect("test: hold the writer lock"):
            held.set()
            release.wait()

    holder = threading.Thread(target=hold_the_writer_lock)
    holder.start()
    try:
        assert held.wait(timeout=30)
        # A sensor that reached for the warehouse would get WarehouseBusy after half a second.
        impatient = {
            "warehouse": WarehouseResource(database=str(runs.settings.warehouse_path), lock_timeout_s=0.5)
        }
        data = runs.tick(resources=impatient)
        assert data.skip_message == "no finished sync runs to record"
    finally:
        release.set()
        holder.join()
    assert runs.request(sync_id) == recorded
