"""The shipped deploy/dagster.yaml, loaded as a real Dagster instance against a real PostgreSQL server: a sync
run of ours lands its run, events and materializations there, the daemon's sensors keep their state there,
the run queue holds runs over the limits the file sets, and run monitoring fails a run stuck starting.

Nothing here is mocked but the run launcher of the queue test (so dequeued runs are recorded, not executed:
what is under test is which runs the coordinator lets go). Every other part is Dagster's own daemon code
(the queued-run coordinator, the sensor and run-monitoring iterations) over the file as shipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorState
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import MockedRunLauncher, create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._serdes import deserialize_value
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from oura_assets.config import Settings
from oura_assets.defs.assets import RAW_KEYS
from oura_assets.defs.jobs import SYNC_JOB_NAME
from oura_assets.defs.partitions import PATIENT_TAG, TRIGGER_TAG
from oura_assets.defs.watchdog import fail_runs_without_worker
from oura_assets_tests import support
from oura_assets_tests.postgres_server import PostgresServer
from oura_assets_tests.support import ConnectedPatient

REPO = Path(__file__).resolve().parents[1]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
# The shards helper's run tag (oura_assets/defs/partitions.py once sharding lands); the queue limits name it.
SHARD_TAG = "oura_assets/shard"
START, END = date(2024, 6, 10), date(2024, 6, 11)
LOG = logging.getLogger(__name__)


def shipped_config() -> dict[str, Any]:
    return yaml.safe_load(DEPLOY_YAML.read_text())


@pytest.fixture
def dagster_pg(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[dg.DagsterInstance, str]]:
    """A DagsterInstance loaded from deploy/dagster.yaml (optionally with overrides) with the DAGSTER_PG_*
    variables pointing at a fresh database of the test server; returns it and the database's name."""
    opened: list[dg.DagsterInstance] = []

    def make(home: Path, overrides: Mapping[str, Any] | None = None) -> tuple[dg.DagsterInstance, str]:
        db = f"dagster_{uuid.uuid4().hex[:12]}"
        postgres_server.create_database(db)
        for name, value in {
            "DAGSTER_PG_HOST": postgres_server.host,
            "DAGSTER_PG_PORT": str(postgres_server.port),
            "DAGSTER_PG_DB": db,
            "DAGSTER_PG_USERNAME": postgres_server.user,
            "DAGSTER_PG_PASSWORD": "",  # the test cluster trusts its one role
        }.items():
            monkeypatch.setenv(name, value)
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(yaml.safe_dump({**shipped_config(), **(overrides or {})}))
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        instance = dg.DagsterInstance.get()
        opened.append(instance)
        return instance, db

    yield make
    for instance in opened:
        instance.dispose()


@contextlib.contextmanager
def our_workspace(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    """Our code location (`oura_assets.definitions`, as workspace.yaml loads it), in this process."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="oura_assets.definitions", working_directory=str(REPO)),
        location_name="oura_assets",
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context


def remote_repository(context: WorkspaceProcessContext) -> Any:
    location = context.create_request_context().get_code_location("oura_assets")
    (repository,) = location.get_repositories().values()
    return repository


def test_the_shipped_instance_keeps_runs_events_and_schedules_in_postgres(
    dagster_pg: Callable[..., tuple[dg.DagsterInstance, str]],
    postgres_server: PostgresServer,
    connect_patient: Callable[..., ConnectedPatient],
    pipeline_env: Settings,
    tmp_path: Path,
) -> None:
    patient = connect_patient("patient-pg")
    instance, db = dagster_pg(tmp_path / "dagster_home")
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    # The raw multi-asset and its checks: the part of the sync job that talks to Oura and records the
    # run's per-patient results (what the event sensor reads back below), a dozen steps instead of forty.
    result = support.run_sync(
        START, END, instance=instance, asset_selection=list(RAW_KEYS.values()), run_config=support.UNPACED
    )
    assert result.success, support.failures(result)
    run_id = result.run_id
    assert (
        support.query(
            pipeline_env,
            "SELECT count(*) FROM oura_raw.daily_readiness WHERE patient_id = ?",
            [patient.patient_id],
        )[0][0]
        > 0
    )

    def sql(query: str) -> list[str]:
        out = postgres_server.psql(query, dbname=db)
        return out.splitlines() if out else []

    # The run and its whole event log are rows of PostgreSQL, not files under DAGSTER_HOME.
    assert sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'") == ["SUCCESS"]  # noqa: S608 (run ids: uuids)
    assert not list((tmp_path / "dagster_home").glob("**/*.db"))
    materialized = {event.asset_key.to_string() for event in result.get_asset_materialization_events()}
    assert materialized == {key.to_string() for key in RAW_KEYS.values()}
    stored = sql(
        f"SELECT asset_key FROM event_logs WHERE run_id = '{run_id}' "  # noqa: S608 (run ids: uuids)
        "AND dagster_event_type = 'ASSET_MATERIALIZATION'"
    )
    assert len(stored) == len(result.get_asset_materialization_events())
    assert set(stored) == materialized
    assert int(sql(f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}'")[0]) == len(  # noqa: S608 (run ids: uuids)
        instance.all_logs(run_id)
    )
    assert set(sql("SELECT asset_key FROM asset_keys WHERE last_materialization IS NOT NULL")) >= materialized

    with our_workspace(instance) as context:
        # The daemon's sensor pass, as `dagster-daemon run` does it: sensor cursors and ticks land in
        # PostgreSQL, and the `wearable_sync_events` sensor finds the finished run there and records it.
        list(execute_sensor_iteration(context, LOG, None, None))
        # An operator stops the nightly schedule (UI or `dagster schedule stop`): its state is a row too.
        schedule = remote_repository(context).get_schedule("sync_wearables_daily")
        instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)

    # Instigator states as stored: (type, status, name) decoded from the rows themselves.
    states = {
        (kind, status, deserialize_value(body, InstigatorState).instigator_name)
        for kind, status, body in map(
            json.loads,
            sql("SELECT json_build_array(instigator_type, status, instigator_body) FROM instigators"),
        )
    }
    assert ("SCHEDULE", "STOPPED", "sync_wearables_daily") in states
    sensors = {name for kind, _, name in states if kind == "SENSOR"}
    assert {"wearable_sync_events", "oura_sync_requests", "run_worker_watchdog"} <= sensors
    assert int(sql("SELECT count(DISTINCT selector_id) FROM job_ticks WHERE type = 'SENSOR'")[0]) >= 3
    events = support.query(
        pipeline_env,
        "SELECT patient_id FROM patient_graph.patient_events WHERE event_type = 'wearable_sync' "
        "AND event_id = ?",
        [f"wearable_sync:{run_id}:{patient.patient_id}"],
    )
    assert events == [(patient.patient_id,)]


def test_the_run_queue_holds_runs_over_the_shipped_limits_and_monitoring_fails_a_stuck_start(
    dagster_pg: Callable[..., tuple[dg.DagsterInstance, str]],
    postgres_server: PostgresServer,
    pipeline_env: Settings,
    tmp_path: Path,
) -> None:
    # Everything from deploy/dagster.yaml but the launcher: dequeued runs are recorded, not executed.
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    instance, db = dagster_pg(tmp_path / "dagster_home", {"run_launcher": launcher})
    coordinator = shipped_config()["run_coordinator"]["config"]
    assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 8
    assert coordinator["max_concurrent_runs"] == 8

    with our_workspace(instance) as context:
        remote_job = remote_repository(context).get_full_job(SYNC_JOB_NAME)

        def submit(**tags: str) -> str:
            run = create_run_for_test(
                instance,
                job_name=SYNC_JOB_NAME,
                status=DagsterRunStatus.NOT_STARTED,
                tags=tags,
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
            )
            instance.submit_run(run.run_id, context.create_request_context())
            return run.run_id

        def api(patient: str) -> str:
            return submit(**{PATIENT_TAG: patient, TRIGGER_TAG: "api"})

        def shard(name: str) -> str:
            return submit(**{SHARD_TAG: name, TRIGGER_TAG: "schedule"})

        def dequeue() -> None:
            with QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon:
                list(daemon.run_iteration(context))

        def status(run_id: str) -> str:
            return postgres_server.psql(f"SELECT status FROM runs WHERE run_id = '{run_id}'", dbname=db)  # noqa: S608 (run ids: uuids)

        # In the order they were queued: the queue is first in, first out within the limits.
        p1, p1_again, p2, p3, p4 = api("p1"), api("p1"), api("p2"), api("p3"), api("p4")
        s1, s1_again, s2 = shard("1/6"), shard("1/6"), shard("2/6")
        b1, b2 = submit(**{"dagster/backfill": "bf-1"}), submit(**{"dagster/backfill": "bf-2"})
        assert {status(r) for r in (p1, p2, b1, s1)} == {"QUEUED"}
        dequeue()
        launched = {p1, p2, p3, s1, s2, b1}
        held = {
            p1_again: "one run per patient",
            p4: "three API syncs at a time",
            s1_again: "one run per shard",
            b2: "one backfill run at a time",
        }
        assert {r for r in launched | set(held) if status(r) == "STARTING"} == launched, held
        for run_id, why in held.items():
            assert status(run_id) == "QUEUED", why

        # Six runs in flight, four more shards eligible: only two fit under max_concurrent_runs = 8.
        more = [shard(f"{n}/6") for n in range(3, 7)]
        dequeue()
        assert [status(r) for r in more] == ["STARTING", "STARTING", "QUEUED", "QUEUED"]
        assert postgres_server.psql("SELECT count(*) FROM runs WHERE status = 'STARTING'", dbname=db) == "8"
        assert isinstance(instance.run_launcher, MockedRunLauncher)
        assert len(instance.run_launcher.queue()) == 8

        # Run monitoring is on with the shipped timeouts: a run whose worker has not come up within
        # start_timeout_seconds is failed by the daemon's monitoring pass, the others are left alone.
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_resume_run_attempts == 0
        list(execute_run_monitoring_iteration(context, LOG))
        assert status(p1) == "STARTING"
        postgres_server.psql(
            "UPDATE event_logs SET timestamp = timestamp - interval '181 seconds' "  # noqa: S608 (run ids: uuids)
            f"WHERE run_id = '{p1}' AND dagster_event_type = 'PIPELINE_STARTING'",
            dbname=db,
        )
        list(execute_run_monitoring_iteration(context, LOG))
        assert status(p1) == "FAILURE"
        assert status(p2) == "STARTING"
        # Its slot is free again: the next dequeue lets the held run of the same patient go.
        dequeue()
        assert status(p1_again) == "STARTING"


class WorkerReportingLauncher(MockedRunLauncher):
    """A launcher that, like the K8sRunLauncher, can report whether a run's worker lives."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True


def _started_run_with_dead_worker(instance: dg.DagsterInstance) -> str:
    worker = subprocess.Popen(["true"])
    worker.wait()  # reaped: its pid names no live process
    run = create_run_for_test(instance, job_name=SYNC_JOB_NAME, status=DagsterRunStatus.STARTED)
    instance.report_dagster_event(
        DagsterEvent(
            event_type_value=DagsterEventType.RUN_START.value, job_name=SYNC_JOB_NAME, pid=worker.pid
        ),
        run_id=run.run_id,
    )
    return run.run_id


@pytest.mark.parametrize(
    ("launcher", "fails_it"),
    [("MockedRunLauncher", True), ("WorkerReportingLauncher", False)],
)
def test_the_watchdog_leaves_runs_to_run_monitoring_when_the_launcher_reports_on_workers(
    launcher: str, fails_it: bool
) -> None:
    """Under the K8sRunLauncher a run's worker is a pod on another node: its pid means nothing on the host
    the watchdog runs on, and Dagster's run monitoring asks Kubernetes instead. The pid check is for the
    default launcher only (runs beside the daemon, as in docker-compose.yaml and `make dev`)."""
    module = "dagster._core.test_utils" if launcher == "MockedRunLauncher" else __name__
    with dg.instance_for_test(overrides={"run_launcher": {"module": module, "class": launcher}}) as instance:
        run_id = _started_run_with_dead_worker(instance)
        assert fail_runs_without_worker(instance) == ([run_id] if fails_it else [])
        expected = DagsterRunStatus.FAILURE if fails_it else DagsterRunStatus.STARTED
        assert instance.get_run_by_id(run_id).status == expected
