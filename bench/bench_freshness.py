"""Freshness under `make dev`: how long a new patient waits for their first data, and a webhook's change.

Both benchmarks start the real development stack, `oura-assets dev` (simulator + connection API +
`dagster dev` with its daemon), in a throwaway directory on free loopback ports, and drive it only from
outside, as a patient's app and Oura would:

- `first_data`: patients connect through the real OAuth flow (connect -> the simulator's consent -> callback);
  the clock starts when the callback answers and stops when the patient's most recent day (the newest day
  the simulator serves a daily document for) is queryable in `patient_graph.wearable_data`. The first
  patient after start-up is reported apart (`cold_s`), the others give the figure
  (`first_data_after_callback_s`, their median; target 20 s). Each is split by Dagster's own run records
  into callback -> run created and run created -> data, with the run's trigger (`first_data`: the API's
  fast lane; `api`: the sensor and the run queue).
- `webhook_freshness`: with the webhook subscriptions ensured (`oura-assets webhooks ensure`) and no schedule
  involved, the simulator's data clock is stepped forward in small steps; each step makes the simulator send
  Oura's signed events for what changed (new days synced, revised documents) to the API. Each event about a
  daily document is timed from its delivery to the moment its patient-day's `wearable_data` row carries a
  `synced_at` after it. 20 events (quick: 12); p50 and p95 (target: p95 < 60 s).

The warehouse is polled every `POLL_S` through the project's own helpers (it is encrypted in demo mode); each
poll holds the writer lock for a few milliseconds, which the pipeline's writes wait out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.demo import connect_patient
from oura_assets.simulator.data.queries import documents_for_day
from oura_assets.simulator.webhooks import document_day

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.5
STARTUP_TIMEOUT_S = 360
FIRST_DATA_TIMEOUT_S = 180
EVENT_TIMEOUT_S = 240
TARGET_FIRST_DATA_S = 20.0
TARGET_WEBHOOK_P95_S = 60.0
DAILY_METRIC = {"daily_readiness": "readiness", "daily_sleep": "sleep", "daily_activity": "activity"}
# Where the webhook benchmark puts the simulator's data clock: far enough back that stepping it forward
# never passes the real today (the request sensor clamps a sync's last day to it).
CLOCK_BACK = timedelta(days=6)
CLOCK_STEP = timedelta(hours=3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevStack:
    """`oura-assets dev` running in `root` (a temp dir) on free ports."""

    root: Path
    env: dict[str, str]
    settings: Settings
    process: subprocess.Popen[bytes]
    dagster_port: int
    log_path: Path

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    @property
    def simulator_url(self) -> str:
        return self.settings.simulator_url

    def warehouse(self) -> wh.Warehouse:
        return wh.Warehouse(self.settings.warehouse_path, lock_timeout_s=30, key=self.settings.warehouse_key)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).parent / "oura-assets"
        return subprocess.run(
            [str(exe), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120
        )

    def instance(self) -> Any:
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.root / "data" / "dagster"))


def _wait_http(url: str, deadline: float, process: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"oura-assets dev exited ({process.returncode}) before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {STARTUP_TIMEOUT_S} s")


@contextlib.contextmanager
def dev_stack() -> Iterator[DevStack]:
    """Start `oura-assets dev` in a temp dir (its own data/, Dagster home and ports); stop it after."""
    root = Path(tempfile.mkdtemp(prefix="oura-fresh-"))
    for name in ("workspace.yaml", "dagster.yaml"):
        shutil.copy(REPO / name, root / name)
    sim_port, api_port, dagster_port = _free_port(), _free_port(), _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OURA_", "CLERK_", "DAGSTER_")) or k == "DAGSTER_DISABLE_TELEMETRY"
    }
    env.update(
        {
            "OURA_ASSETS_DEMO": "1",
            "OURA_ASSETS_SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
            "OURA_ASSETS_API_URL": f"http://127.0.0.1:{api_port}",
            "OURA_ASSETS_WAREHOUSE": str(root / "data" / "warehouse.duckdb"),
            "DAGSTER_HOME": str(root / "data" / "dagster"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    (root / "data").mkdir()
    log_path = root / "dev.log"
    exe = Path(sys.executable).parent / "oura-assets"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(exe), "dev", "--port", str(dagster_port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        settings = load_settings(env)
        _wait_http(settings.simulator_url + "/_sim/stats", deadline, process)
        _wait_http(settings.api_url + "/healthz", deadline, process)
        _wait_http(f"http://127.0.0.1:{dagster_port}/server_info", deadline, process)
        yield DevStack(root, env, load_settings(env), process, dagster_port, log_path)
    except BaseException:
        print(f"  oura-assets dev log (tail):\n{log_path.read_text(errors='replace')[-3000:]}", flush=True)
        raise
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if os.environ.get("OURA_BENCH_KEEP"):
            print(f"  kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- time to first data -------------------------------------------------------------------------------------


def most_recent_day(ring_user: str, now: datetime) -> date:
    """The newest day the simulator serves a daily document for (what the patient sees in the Oura app)."""
    for back in range(0, 10):
        day = now.date() - timedelta(days=back)
        if any(documents_for_day(ring_user, c, day, now) for c in DAILY_METRIC):
            return day
    raise AssertionError(f"{ring_user} has no daily document in 10 days")


def _newest_day(stack: DevStack, patient_id: str) -> date | None:
    with stack.warehouse().connect("bench: poll wearable_data") as conn:
        row = conn.execute(
            "SELECT max(day) FROM patient_graph.wearable_data WHERE patient_id = ?", [patient_id]
        ).fetchone()
    return None if row is None or row[0] is None else row[0]


def _runs_for(stack: DevStack, sync_id: str) -> list[Any]:
    import dagster as dg

    instance = stack.instance()
    try:
        records = [
            r
            for job in ("oura_sync", "oura_sync_fast_lane")
            for r in instance.get_run_records(filters=dg.RunsFilter(job_name=job))
        ]
    finally:
        instance.dispose()
    return [r for r in records if sync_id in r.dagster_run.tags.get("oura_assets/sync_ids", "").split(",")]


def _phases(stack: DevStack, sync_ids: list[str], callback_at: float, data_at: float) -> dict[str, Any]:
    """Where the time went, from the first run that carried one of `sync_ids` (Dagster's run records)."""
    records = [r for s in sync_ids for r in _runs_for(stack, s)]
    if not records:
        return {"run": None}
    first = min(records, key=lambda r: r.create_timestamp)
    created = first.create_timestamp.timestamp()
    return {
        "run_id": first.dagster_run.run_id[:8],
        "trigger": first.dagster_run.tags.get("oura_assets/trigger"),
        "callback_to_run_created_s": round(created - callback_at, 2),
        "run_created_to_data_s": round(data_at - created, 2),
    }


def time_first_data(stack: DevStack, patient_id: str, ring_user: str) -> dict[str, Any]:
    expected = most_recent_day(ring_user, datetime.now(UTC))
    answered = connect_patient(stack.api_url, patient_id, ring_user, stack.settings)
    callback_at = time.time()
    t0 = time.monotonic()
    while time.monotonic() - t0 < FIRST_DATA_TIMEOUT_S:
        newest = _newest_day(stack, patient_id)
        if newest is not None and newest >= expected:
            elapsed = time.monotonic() - t0
            sync_ids = [answered[k] for k in ("firstDataSyncId", "syncId") if answered.get(k)]
            return {"s": round(elapsed, 2), **_phases(stack, sync_ids, callback_at, time.time())}
        time.sleep(POLL_S)
    raise TimeoutError(
        f"{patient_id}: {expected} not in wearable_data {FIRST_DATA_TIMEOUT_S} s after callback"
    )


def bench_first_data(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """Callback -> the patient's most recent day in `wearable_data`, under `oura-assets dev`."""
    patients = int(size.get("fresh_patients", 2 if _quick(size) else 4))
    with dev_stack() as stack:
        cold = time_first_data(stack, "fresh-cold", "fresh-ring-cold")
        print(f"  first patient after start-up: {cold}", flush=True)
        warm = []
        for i in range(patients):
            # Patients arrive one at a time, a few seconds apart, as real sign-ups do.
            time.sleep(2)
            measured = time_first_data(stack, f"fresh-{i}", f"fresh-ring-{i}")
            print(f"  patient {i}: {measured}", flush=True)
            warm.append(measured)
    seconds = [m["s"] for m in warm]
    median = statistics.median(seconds)
    rows.append(
        [
            "first_data",
            "callback -> most recent day in wearable_data (s)",
            "45-85 (seed)",
            f"{median:.1f}",
            "-",
        ]
    )
    return {
        "ok": median <= TARGET_FIRST_DATA_S,
        "load_avg_1m_end": round(os.getloadavg()[0], 1),
        "target_s": TARGET_FIRST_DATA_S,
        "cold_s": cold["s"],
        "cold": cold,
        "patients": warm,
        "max_s": max(seconds),
        "results": {"first_data_after_callback_s": round(median, 2)},
    }


# --- webhook -> warehouse ---------------------------------------------------------------------------------


def _synced_at(stack: DevStack, wanted: list[tuple[str, str, date]]) -> dict[tuple[str, str, date], datetime]:
    """`synced_at` of the (patient, metric_type, day) rows of `wanted` that exist."""
    if not wanted:
        return {}
    patients = sorted({p for p, _, _ in wanted})
    with stack.warehouse().connect("bench: poll wearable_data") as conn:
        found = conn.execute(
            "SELECT patient_id, metric_type, day, synced_at FROM patient_graph.wearable_data "
            "WHERE list_contains(?, patient_id)",
            [patients],
        ).fetchall()
    return {(p, m, d): s for p, m, d, s in found}


def bench_webhook_freshness(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """Simulated data changes -> Oura's signed webhook -> the API -> a run -> `wearable_data`."""
    wanted_events = int(size.get("webhook_events", 12 if _quick(size) else 20))
    patients = {f"hook-{i}": f"hook-ring-{i}" for i in range(int(size.get("webhook_patients", 2)))}
    with dev_stack() as stack:
        ensured = stack.cli("webhooks", "ensure")
        if ensured.returncode != 0:
            raise RuntimeError(f"oura-assets webhooks ensure failed: {ensured.stderr.strip()}")
        clock = datetime.now(UTC) - CLOCK_BACK
        httpx.post(stack.simulator_url + "/_sim/clock", json={"now": clock.isoformat()}, timeout=10)
        for patient_id, ring in patients.items():
            connect_patient(stack.api_url, patient_id, ring, stack.settings)
        # The patients' initial syncs (first data and 30 days) finish first: what is measured here is a
        # connected patient's day-to-day updates, not onboarding.
        deadline = time.monotonic() + 2 * FIRST_DATA_TIMEOUT_S
        while _open_requests(stack) and time.monotonic() < deadline:
            time.sleep(2)
        by_ring = {ring: patient for patient, ring in patients.items()}
        pending: dict[tuple[str, str, date], float] = {}
        latencies: list[float] = []
        sent = steps = 0
        began = time.monotonic()
        while (sent < wanted_events or pending) and time.monotonic() - began < EVENT_TIMEOUT_S:
            if sent < wanted_events:
                before, clock = clock, clock + CLOCK_STEP
                httpx.post(stack.simulator_url + "/_sim/clock", json={"now": clock.isoformat()}, timeout=10)
                delivered_at = time.time()
                answer = httpx.post(
                    stack.simulator_url + "/_sim/webhooks/changes",
                    json={"users": list(by_ring), "before": before.isoformat(), "after": clock.isoformat()},
                    timeout=60,
                ).json()
                steps += 1
                for event in answer["events"]:
                    metric = DAILY_METRIC.get(event["data_type"])
                    if metric is None or event["event_type"] == "delete" or sent >= wanted_events:
                        continue
                    ring = next(r for r in by_ring if _user_id(r) == event["user_id"])
                    day = document_day(ring, event["object_id"])
                    if day is None:
                        continue
                    key = (by_ring[ring], metric, day)
                    if key not in pending:
                        pending[key] = delivered_at
                        sent += 1
            stored = _synced_at(stack, list(pending))
            for key, at in list(pending.items()):
                synced = stored.get(key)
                if synced is not None and synced.timestamp() >= at:
                    latencies.append(time.time() - at)
                    del pending[key]
            time.sleep(POLL_S if not pending or sent >= wanted_events else 2.0)
        subscriptions = httpx.get(stack.simulator_url + "/_sim/webhooks", timeout=10).json()
    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p95 = (
        latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] if latencies else float("nan")
    )
    rows.append(
        ["webhook_freshness", "event -> wearable_data p95 (s)", "nightly (up to 24 h)", f"{p95:.1f}", "-"]
    )
    return {
        "ok": not pending and len(latencies) >= wanted_events and p95 < TARGET_WEBHOOK_P95_S,
        "load_avg_1m_end": round(os.getloadavg()[0], 1),
        "target_p95_s": TARGET_WEBHOOK_P95_S,
        "events": len(latencies),
        "never_arrived": len(pending),
        "clock_steps": steps,
        "deliveries": len(subscriptions.get("deliveries", [])),
        "latencies_s": [round(x, 2) for x in latencies],
        "results": {"webhook_to_warehouse_p50_s": round(p50, 2), "webhook_to_warehouse_p95_s": round(p95, 2)},
    }


def _open_requests(stack: DevStack) -> int:
    with stack.warehouse().connect("bench: open sync requests") as conn:
        row = conn.execute(
            "SELECT count(*) FROM patient_graph.sync_requests WHERE status IN ('queued', 'running')"
        ).fetchone()
    return int(row[0]) if row else 0


def _quick(size: dict[str, Any]) -> bool:
    """run.py's sizes: quick runs 2 patients where full runs 5."""
    return int(size.get("patients", 5)) < 5


def _user_id(ring_user: str) -> str:
    from oura_assets.simulator.data.users import profile

    return profile(ring_user).user_id


if (
    __name__ == "__main__"
):  # a quick look without run.py: python bench/bench_freshness.py [first_data|webhook]
    table: list[list[str]] = []
    which = sys.argv[1] if len(sys.argv) > 1 else "first_data"
    bench = bench_first_data if which == "first_data" else bench_webhook_freshness
    print(bench({"fresh_patients": 2, "webhook_events": 12}, table))
    print(table)
