"""Several writers share one DuckDB file (CONTRACT §6): the API, sensors and a Dagster run, each a process.

Each test puts a real Dagster materialization (`oura_sync` against the simulator) beside another process that
uses the same warehouse: the connection API served by `oura-assets serve` and hammered by client threads, a
process holding the writer lock past everyone's patience, and a sensor process evaluating both sensors tick
after tick. What must hold: no failed request and no failed run, no lost or duplicated write, and a lock held
too long ends in a clear message naming the holder, never a stack trace or DuckDB's raw lock error.

Every loop is bounded in count and in time, servers bind 127.0.0.1, and child processes are killed on the way
out whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from oura_assets import warehouse as wh
from oura_assets.api.auth import JwtVerifier, StaticKeys
from oura_assets.api.server import ApiServer
from oura_assets.api.state import state_hash
from oura_assets.config import Settings
from oura_assets.definitions import defs as load_defs
from oura_assets_tests.api_support import ISSUER, claims, jwks_server, new_key, public, sign
from oura_assets_tests.support import ConnectedPatient, failures, query, run_sync, snapshot, stop_process

# Every test here starts child processes beside a real run: 5-45 s each (`pytest -m "not slow"` skips them).
pytestmark = pytest.mark.slow

W = "/api/patient-graph/wearables"
KEY = new_key()
# A week: a run writes each patient's raw documents in one transaction and each graph asset in one more,
# whatever the range, so more days add no write to race with, only Dagster's per-day materialization events
# (most of a run's time here: at 14 days the sensor test's runs stored 882 events, 38 s of its 92 s, loaded).
START, END = date(2024, 6, 10), date(2024, 6, 16)
PATIENTS = 4
CLIENT_THREADS = 6
MAX_REQUESTS_PER_THREAD = 400
HAMMER_LIMIT_S = 60.0
CHILD_START_S = 20.0
OURA_ASSETS = str(Path(sys.executable).parent / "oura-assets")
HOLDER_PURPOSE = "dagster run abcd1234: write wearable_data"
KINDS = ("sync", "status", "connections", "connect")
EXPECTED_STATUS = {"sync": 202, "status": 200, "connections": 200, "connect": 200}

ConnectPatient = Callable[..., ConnectedPatient]


# --- helpers -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bearer(patient_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign(KEY, claims(patient_id))}"}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = CHILD_START_S) -> None:
    """Poll `condition` until it holds; fail the test naming `what` once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


@contextmanager
def child_process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child with stdout and stderr in `log` (a file, so a chatty child never blocks on a full pipe).

    Terminated, then killed if it lingers, when the block ends — however it ends.
    """
    with log.open("w") as out:
        process = subprocess.Popen(args, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def materialize(
    definitions: dg.Definitions, instance: dg.DagsterInstance, run_config: dict[str, Any] | None = None
) -> dg.ExecuteInProcessResult:
    """One `oura_sync` run over START..END for every active patient, as a single-run backfill does it."""
    return run_sync(START, END, definitions=definitions, instance=instance, run_config=run_config)


def assert_no_duplicate_keys(settings: Settings) -> None:
    """Every table's natural key is unique (the primary keys say so; this checks the data agrees)."""
    keys = {
        "patient_graph.wearable_data": "patient_id, source, metric_type, day",
        "patient_graph.patient_wearable_daily_stats": "patient_id, source, day",
        "patient_graph.sync_requests": "sync_id",
        "patient_graph.sync_results": "run_id, patient_id",
        "patient_graph.oauth_states": "state_hash",
        "patient_graph.patient_events": "event_id",
        "oura_raw.heartrate": "patient_id, timestamp, source",
        **{f"oura_raw.{c}": "patient_id, id" for c in wh.DOCUMENT_COLLECTIONS},
    }
    for table, key in keys.items():
        sql = f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)"  # noqa: S608
        assert query(settings, sql) == [(0,)], f"duplicate ({key}) in {table}"


# --- 1. the API hammered while a run writes -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    kind: str
    patient_id: str
    status: int
    at: float
    body: dict[str, Any] | None
    text: str
    retry_after: str | None


@dataclass
class Hammer:
    """Client threads calling the API for every patient, a mix of writes and reads, until told to stop."""

    base: str
    patients: list[str]
    sync_ids: dict[str, list[str]] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def call(self, http: httpx.Client, kind: str, patient_id: str) -> Answer:
        headers = bearer(patient_id)
        if kind == "sync":
            body = {"source": "oura", "startDate": START.isoformat(), "endDate": END.isoformat()}
            response = http.post(f"{W}/sync", headers=headers, json=body)
        elif kind == "status":
            with self._lock:
                sync_id = self.sync_ids[patient_id][-1]
            response = http.get(f"{W}/sync/{sync_id}", headers=headers)
        elif kind == "connections":
            response = http.get(f"{W}/connections", headers=headers)
        else:
            response = http.post(f"{W}/connect/oura", headers=headers)
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        answer = Answer(
            kind,
            patient_id,
            response.status_code,
            time.monotonic(),
            parsed,
            response.text,
            response.headers.get("retry-after"),
        )
        with self._lock:
            self.answers.append(answer)
            if kind == "sync" and answer.status == 202 and parsed:
                self.sync_ids[patient_id].append(parsed["data"]["syncId"])
        return answer

    def seed(self) -> None:
        """One sync request per patient before the run, so every thread has a sync id to follow."""
        with httpx.Client(base_url=self.base, timeout=30) as http:
            for patient_id in self.patients:
                self.sync_ids[patient_id] = []
                answer = self.call(http, "sync", patient_id)
                assert answer.status == 202, answer.text

    def _work(self, number: int) -> None:
        deadline = time.monotonic() + HAMMER_LIMIT_S
        with httpx.Client(base_url=self.base, timeout=30) as http:
            for n in range(MAX_REQUESTS_PER_THREAD):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                kind = KINDS[(number + n) % len(KINDS)]
                patient_id = self.patients[(number + n // len(KINDS)) % len(self.patients)]
                try:
                    self.call(http, kind, patient_id)
                except httpx.HTTPError as exc:  # recorded as a failed answer, not a silently dead thread
                    with self._lock:
                        self.answers.append(
                            Answer(kind, patient_id, -1, time.monotonic(), None, repr(exc), None)
                        )

    def start(self) -> None:
        for number in range(CLIENT_THREADS):
            thread = threading.Thread(target=self._work, args=(number,), name=f"hammer-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
        assert not any(t.is_alive() for t in self._threads), "a client thread is still waiting for an answer"


def test_api_hammered_from_threads_while_a_run_materializes(
    pipeline_env: Settings, connect_patient: ConnectPatient, tmp_path: Path
) -> None:
    """`oura-assets serve` in its own process answers every request while a week's run writes, and loses none.

    The reference for the run's tables is a quiet re-run over the same range (idempotent by contract): any
    row the hammered run lost, doubled or mangled would make the two snapshots differ.
    """
    settings = pipeline_env
    patients = [f"patient-{n}" for n in range(PATIENTS)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with jwks_server([public(KEY)]) as jwks:
        env = {**os.environ, "CLERK_JWKS_URL": jwks.url, "CLERK_ISSUER": ISSUER}
        with child_process([OURA_ASSETS, "serve", "--port", str(port)], log, env) as api:
            # The patients connect and the definitions load while the API process starts (seconds each).
            for patient_id in patients:
                connect_patient(patient_id)
            definitions, instance = load_defs(), dg.DagsterInstance.ephemeral()

            def healthy() -> bool:
                assert api.poll() is None, f"oura-assets serve exited:\n{log.read_text()}"
                try:
                    return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, "oura-assets serve to answer /healthz")
            hammer = Hammer(base, patients)
            hammer.seed()
            try:
                hammer.start()
                wait_for(lambda: len(hammer.answers) >= 2 * PATIENTS, "the first answers to the hammering")
                began = time.monotonic()
                result = materialize(definitions, instance)
                ended = time.monotonic()
            finally:
                hammer.finish()
            assert api.poll() is None, "the API process died under load"

    assert result.success, failures(result)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["oura_assets/patients_ok"] == str(PATIENTS), run and run.tags

    answers = hammer.answers
    wrong = [(a.kind, a.status, a.text[:300]) for a in answers if a.status != EXPECTED_STATUS[a.kind]]
    assert not wrong, wrong[:5]
    assert all(a.body and a.body["success"] is True for a in answers)
    during = [a for a in answers if began <= a.at <= ended]
    assert {a.kind for a in during} == set(KINDS), "every kind of request was answered while the run wrote"
    assert len(during) >= 4 * len(KINDS), Counter(a.kind for a in during)

    # No lost write: every 202 is a row, every issued state is stored (hashed) for its patient, nothing else.
    accepted = {(a.body["data"]["syncId"], a.patient_id) for a in answers if a.kind == "sync" and a.body}
    stored = set(query(settings, "SELECT sync_id, patient_id FROM patient_graph.sync_requests"))
    assert stored == accepted
    issued = {
        (state_hash(httpx.URL(a.body["data"]["authUrl"]).params["state"]), a.patient_id)
        for a in answers
        if a.kind == "connect" and a.body
    }
    assert set(query(settings, "SELECT state_hash, patient_id FROM patient_graph.oauth_states")) == issued
    followed = [a.body["data"]["status"] for a in answers if a.kind == "status" and a.body]
    assert set(followed) == {"queued"}  # nobody turned them into runs here
    listed = {
        a.body["data"]["connections"][0]["status"] for a in answers if a.kind == "connections" and a.body
    }
    assert listed == {"active"}

    # No lost or duplicated rows: the hammered run's tables equal a quiet run's.
    hammered = snapshot(settings)
    landed = query(
        settings, "SELECT count(DISTINCT patient_id), min(day), max(day) FROM patient_graph.wearable_data"
    )
    assert landed == [(PATIENTS, START, END)]
    assert materialize(definitions, instance).success
    assert snapshot(settings) == hammered
    assert_no_duplicate_keys(settings)

    served = log.read_text()
    assert "Traceback" not in served and "unhandled" not in served
    counts = Counter(a.status for a in answers)
    print(
        f"\nhammered API: {len(answers)} answers {dict(counts)}, {len(during)} in {ended - began:.1f} s run"
    )


# --- 2. a lock held too long ----------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from oura_assets import warehouse as wh
    path, purpose, stop = sys.argv[1:4]
    with wh.Warehouse(path, lock_timeout_s=20).connect(purpose):
        print("held", flush=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(stop) and time.monotonic() < deadline:
            time.sleep(0.02)
    print("released", flush=True)
    """
)


def test_a_lock_held_too_long_names_its_holder_to_the_api_log_and_the_failed_run(
    pipeline_env: Settings,
    connect_patient: ConnectPatient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds the writer lock past the API's wait and the run's: clean 503s, a clear failure.

    The API's 503 body tells the caller to come back (Retry-After, the JSON envelope) and keeps the holder to
    the operator's log; the failed run's event names the holder's pid and purpose as `WarehouseBusy`.
    """
    settings = pipeline_env
    connect_patient("patient-a")
    caplog.set_level(logging.WARNING, logger="oura_assets.api")
    definitions, instance = load_defs(), dg.DagsterInstance.ephemeral()
    verifier = JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER)
    stop, log = tmp_path / "release", tmp_path / "holder.log"
    headers = bearer("patient-a")
    holder_args = [sys.executable, "-c", HOLDER, str(settings.warehouse_path), HOLDER_PURPOSE, str(stop)]
    with (
        ApiServer(settings, lock_wait_s=0.5, jwt_verifier=verifier) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as http,
    ):
        with child_process(holder_args, log) as holder:
            wait_for(lambda: "held" in log.read_text(), "the holder to take the warehouse")
            answers = [
                http.post(f"{W}/sync", json={"source": "oura"}),
                http.get(f"{W}/connections"),
                http.post(f"{W}/connect/oura"),
            ]
            answered_while_held = holder.poll() is None and "released" not in log.read_text()
            impatient = {"database": str(settings.warehouse_path), "lock_timeout_s": 1.0}
            result = materialize(definitions, instance, {"resources": {"warehouse": {"config": impatient}}})
            stop.touch()
            holder.wait(timeout=20)
        after = http.post(f"{W}/sync", json={"source": "oura"})
    assert holder.returncode == 0, log.read_text()
    assert "released" in log.read_text()

    assert answered_while_held, "each request gave up after its 0.5 s wait, not once the holder let go"
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json() == {
            "success": False,
            "error": {
                "code": "warehouse_busy",
                "message": f"the warehouse is busy; retry in {answer.headers['retry-after']} s",
            },
        }
        assert HOLDER_PURPOSE not in answer.text and "Traceback" not in answer.text
    named = f"held by pid {holder.pid} ({HOLDER_PURPOSE}) for "
    api_lines = [r.getMessage() for r in caplog.records if r.name == "oura_assets.api"]
    assert sum(named in line for line in api_lines) == len(answers), api_lines
    assert not any(r.exc_info for r in caplog.records if r.name == "oura_assets.api")
    assert after.status_code == 202, after.text  # once the holder lets go, the API writes again

    assert not result.success
    texts = failures(result)
    assert any(f"WarehouseBusy: warehouse {settings.warehouse_path} is busy: {named}" in t for t in texts), (
        texts
    )
    joined = "\n".join(texts)
    assert "IOException" not in joined and "Could not set lock" not in joined
    queued = query(settings, "SELECT status FROM patient_graph.sync_requests")
    assert queued == [("queued",)]  # the 503s wrote nothing, the request after them did


# --- 3. sensors evaluated in another process while a run writes -----------------------------------------

SENSORS = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    import dagster as dg
    from oura_assets.definitions import defs
    home, go, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    definitions = defs()
    instance = dg.DagsterInstance.from_config(home)
    summary = {"evaluations": {}, "errors": [], "run_keys": []}
    # Loaded (Dagster's import and the definitions: seconds) while the test's first run goes on; ticks
    # begin once the test says go.
    print("ready", flush=True)
    waiting = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < waiting:
        time.sleep(0.02)
    deadline = time.monotonic() + 40
    for n in range(limit):
        if os.path.exists(stop) or time.monotonic() > deadline:
            break
        for name in ("wearable_sync_events", "oura_sync_requests"):
            try:
                with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
                    data = definitions.resolve_sensor_def(name).evaluate_tick(context)
                summary["evaluations"][name] = summary["evaluations"].get(name, 0) + 1
                summary["run_keys"] = sorted({*summary["run_keys"], *(r.run_key for r in data.run_requests)})
            except Exception:
                summary["errors"].append(traceback.format_exc())
        print("tick", time.time(), flush=True)
        time.sleep(0.05)  # the daemon ticks far less often; this is still dozens of ticks per run
    instance.dispose()
    print("summary", json.dumps(summary), flush=True)
    """
)


def test_sensors_evaluated_by_another_process_while_a_run_writes(
    pipeline_env: Settings, connect_patient: ConnectPatient, tmp_path: Path
) -> None:
    """Both sensors tick in a second process (as the Dagster daemon does) through a run: none raises.

    The event sensor writes `wearable_sync` events for the runs it finds finished and the request sensor
    reads the queue, each under the warehouse lock, while the run writes its patients.
    """
    settings = pipeline_env
    patients = [f"patient-{n}" for n in range(3)]
    for patient_id in patients:
        connect_patient(patient_id)
    with wh.Warehouse(settings.warehouse_path).transaction("test: queue sync requests") as conn:
        queued = {wh.create_sync_request(conn, patient_id=p, start_day=START, end_day=END) for p in patients}
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    definitions, instance = load_defs(), dg.DagsterInstance.from_config(str(home))
    go, stop, log = tmp_path / "go", tmp_path / "stop", tmp_path / "sensors.log"
    sensor_args = [sys.executable, "-c", SENSORS, str(home), str(go), str(stop), "500"]
    # The sensor process starts (and loads) while the first run goes on, and ticks only after it.
    with child_process(sensor_args, log) as sensors:
        try:
            # A finished run for the event sensor to record: its range is beside the point, so one day (each
            # day of a ranged run is another materialization event per asset for Dagster to write).
            first = run_sync(START, START, definitions=definitions, instance=instance)
            assert first.success, failures(first)
            go.touch()
            wait_for(lambda: "tick" in log.read_text(), "the sensor process's first tick")
            began = time.time()
            second = materialize(definitions, instance)
            ended = time.time()
            stop.touch()
            sensors.wait(timeout=30)
            assert sensors.returncode == 0, log.read_text()[-3000:]
            with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
                definitions.resolve_sensor_def("wearable_sync_events").evaluate_tick(context)
        finally:
            instance.dispose()

    lines = log.read_text().splitlines()
    summary = json.loads(next(line for line in lines if line.startswith("summary "))[len("summary ") :])
    assert summary["errors"] == [], summary["errors"][0][-2000:]
    ticks = [float(line.split()[1]) for line in lines if line.startswith("tick ")]
    overlapping = sum(began <= t <= ended for t in ticks)
    assert overlapping >= 2, (len(ticks), ended - began)
    assert summary["evaluations"]["wearable_sync_events"] == summary["evaluations"]["oura_sync_requests"]
    assert set(summary["run_keys"]) == queued
    assert second.success, failures(second)

    events = query(
        settings,
        "SELECT payload->>'runId', patient_id, count(*) FROM patient_graph.patient_events "
        "WHERE event_type = 'wearable_sync' GROUP BY ALL ORDER BY ALL",
    )
    runs = sorted([first.run_id, second.run_id])
    assert events == [(r, p, 1) for r in runs for p in patients]
    assert_no_duplicate_keys(settings)
    print(f"\nsensors: {len(ticks)} ticks, {overlapping} during a {ended - began:.1f} s run")
