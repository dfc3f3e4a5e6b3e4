"""A killed run leaves nothing running and is marked failed: the repository's dagster.yaml, the in-process
executor and the run-worker watchdog, tried with a real `oura-assets backfill` process and a real daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml

from oura_assets.definitions import defs as load_defs
from oura_assets.defs.watchdog import process_alive
from oura_assets.demo import ensure_dagster_home

REPO = Path(__file__).resolve().parents[1]
START, END = date(2024, 6, 1), date(2024, 6, 16)


def wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 0.25) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def session_members(sid: int) -> set[int]:
    """Every live (non-zombie) process in session `sid`: the run worker and anything it started."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """A child in its own session; whatever of that session is left is killed on the way out."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield child
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            for pid in session_members(child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_repository_dagster_yaml_enables_run_monitoring_and_is_installed(tmp_path):
    shipped = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert shipped["run_monitoring"]["enabled"] is True
    assert shipped["run_monitoring"]["start_timeout_seconds"] > 0
    assert shipped["run_monitoring"]["cancel_timeout_seconds"] > 0
    assert shipped["telemetry"]["enabled"] is False

    checkout = tmp_path / "checkout"
    (checkout / "data" / "dagster").mkdir(parents=True)
    (checkout / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    # The file `make dev` wrote before the repository shipped one is replaced in our own home.
    (checkout / "data" / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env: dict[str, str] = {}
    home = ensure_dagster_home(env, checkout)
    assert env["DAGSTER_HOME"] == str(home) == str(checkout / "data" / "dagster")
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    # A home the user names keeps a dagster.yaml of its own.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    ensure_dagster_home({"DAGSTER_HOME": str(theirs)}, REPO)
    assert (theirs / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_steps_run_in_the_run_worker_not_in_child_processes(pipeline_env):
    definitions = load_defs()
    assert definitions.resolve_job_def("oura_sync").executor_def is dg.in_process_executor
    assert definitions.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor
    assert (
        definitions.resolve_sensor_def("run_worker_watchdog").default_status == dg.DefaultSensorStatus.RUNNING
    )


def test_process_alive_tells_a_live_worker_from_a_dead_or_reused_pid():
    now = time.time()
    assert process_alive(os.getpid(), now)
    assert not process_alive(os.getpid(), now - 10 * 365 * 86400)  # this pid began after that "run" started
    child = subprocess.Popen(["sleep", "30"])
    child.kill()
    time.sleep(0.2)
    assert not process_alive(child.pid, now)  # a zombie is not a live worker
    child.wait()
    assert not process_alive(child.pid, now)


@pytest.mark.slow
def test_killed_run_leaves_no_process_and_is_marked_failed(
    tmp_path, pipeline_env, connect_patient, simulator
):
    for n in range(2):
        connect_patient(f"patient-{n}")
    # Slow Oura down so the run is still fetching when it is killed.
    simulator.control.set_faults(latency_ms=400)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    ensure_dagster_home(env, REPO)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    bin_dir = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(os.sys.executable).parent
    command = [str(bin_dir / "oura-assets"), "backfill", START.isoformat(), END.isoformat()]

    def fetched() -> int:
        requests = simulator.control.stats()["requests"]
        return sum(sum(codes.values()) for route, codes in requests.items() if "/usercollection/" in route)

    with process(command, env, tmp_path, tmp_path / "backfill.log") as worker:

        def started_run() -> dg.DagsterRun | None:
            runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            return runs[0] if runs and fetched() > 2 else None

        run = wait_for("the backfill run to start fetching", started_run, timeout_s=60)
        members = session_members(worker.pid)
        assert worker.pid in members
        os.kill(
            worker.pid, signal.SIGKILL
        )  # the run worker alone, as the OOM killer or `kill -9 <pid>` would
        worker.wait()
        # Nothing the run started survives it: no step process keeps fetching and writing.
        wait_for("every process of the run to end", lambda: not session_members(worker.pid), timeout_s=10)
        settled = fetched()
        time.sleep(2)
        assert fetched() == settled, "something still talks to Oura after the run was killed"
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    daemon_command = [str(bin_dir / "dagster-daemon"), "run", "-m", "oura_assets.definitions"]
    with process(daemon_command, env, tmp_path, tmp_path / "daemon.log"):
        began = time.monotonic()

        def failed() -> bool:
            return instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE

        try:
            wait_for("the daemon to mark the killed run failed", failed, timeout_s=45, every_s=0.5)
        except AssertionError:
            raise AssertionError((tmp_path / "daemon.log").read_text()[-3000:]) from None
        print(f"marked failed {time.monotonic() - began:.1f} s after the daemon started")
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure and f"pid {worker.pid}" in failure[-1].message


def test_backfill_refuses_a_range_that_ends_before_it_starts(capsys):
    from oura_assets.cli import main

    assert main(["backfill", "2024-06-16", "2024-06-10"]) == 2
    assert "end day is before the start day" in capsys.readouterr().err
