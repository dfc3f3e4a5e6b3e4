"""Contention told truthfully (issue 7.6): a program outside oura_assets holding the DuckDB file is named as
such, to the caller that gives up and to whoever queues behind our own blocked holder; a slow wait is logged
while it lasts, with the holder and the way out, through the log the run passes.

Waits are driven by events (a holder lets go when the log says someone waits), never by wall-clock asserts;
`slow_wait_s` is set low so the tests run in well under a second of waiting.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from oura_assets import warehouse as wh
from oura_assets.sync import sync_patients

SHORT = 0.05  # the slow-wait threshold in these tests, in place of the 5 s default

# A data scientist's notebook: plain duckdb, read-only, outside oura_assets entirely.
NOTEBOOK = textwrap.dedent(
    """
    import sys, duckdb
    connection = duckdb.connect(sys.argv[1], read_only=True)
    print("open", flush=True)
    sys.stdin.read()
    connection.close()
    """
)


class RecordingLog:
    """Collects lines the way `context.log` shows them; `waiting` is set on the first wait report."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.waiting = threading.Event()

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(msg)
        if "waiting" in msg:
            self.waiting.set()

    def error(self, msg: str) -> None:
        self.lines.append(msg)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def store(tmp_path: Path) -> wh.Warehouse:
    warehouse = wh.Warehouse(tmp_path / "warehouse.duckdb", slow_wait_s=SHORT)
    warehouse.ensure_schema()
    return warehouse


@pytest.fixture
def notebook(store: wh.Warehouse) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding the warehouse file open read-only with plain duckdb until the test ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", NOTEBOOK, str(store.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "open"
        yield process
    finally:
        close(process)


def close(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def test_a_notebook_holding_the_file_read_only_is_named_as_not_oura_assets(store, notebook):
    log = RecordingLog()
    mine = wh.Warehouse(store.path, slow_wait_s=SHORT, wait_log=log)
    with pytest.raises(wh.WarehouseBusy) as caught, mine.connect("api: connections", timeout_s=0.5):
        pass
    message = str(caught.value)
    assert f"held by another program, not oura_assets: pid {notebook.pid} (" in message
    assert "e.g. a notebook or the DuckDB CLI" in message
    assert "the way out: close that program's connection" in message
    assert "analytics snapshot" in message
    assert caught.value.holder.foreign and caught.value.holder.pid == notebook.pid
    # The log said so while it waited, and again when it gave up.
    waiting = [line for line in log.lines if "waiting" in line]
    assert waiting and all(f"not oura_assets: pid {notebook.pid}" in line for line in waiting)
    assert "api: connections: waiting" in waiting[0]
    assert any("gave up" in line and f"pid {notebook.pid}" in line for line in log.lines)


def test_a_waiter_behind_our_blocked_holder_is_told_about_the_notebook_not_about_the_run(store, notebook):
    """The reproduced bug: the API blamed the run, which was itself only waiting for the notebook."""
    run_log, api_log = RecordingLog(), RecordingLog()
    run_store = wh.Warehouse(store.path, lock_timeout_s=60, slow_wait_s=SHORT, wait_log=run_log)
    api_store = wh.Warehouse(store.path, slow_wait_s=SHORT, wait_log=api_log)
    landed = threading.Event()

    def run() -> None:
        with run_store.transaction("dagster run 1a2b3c4d: raw documents") as conn:
            wh.create_sync_request(
                conn, patient_id="p1", start_day=date(2024, 6, 10), end_day=date(2024, 6, 10)
            )
        landed.set()

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert run_log.waiting.wait(30), "the run never reported its wait"
        with pytest.raises(wh.WarehouseBusy) as caught, api_store.connect("api: sync", timeout_s=0.5):
            pass
    finally:
        close(notebook)
        runner.join(60)
    message = str(caught.value)
    assert message.startswith(f"warehouse {store.path} is busy: held by another program, not oura_assets: ")
    assert f"pid {notebook.pid}" in message
    assert "(dagster run 1a2b3c4d: raw documents) for " in message
    assert "holds oura_assets' lock while it waits for that program" in message
    assert "the way out: close that program's connection" in message
    assert any(f"not oura_assets: pid {notebook.pid}" in line for line in api_log.lines)
    # The run's log: the wait while it lasted, then how long it took once the notebook closed.
    assert any(f"not oura_assets: pid {notebook.pid}" in line for line in run_log.lines if "waiting" in line)
    assert any("got it" in line for line in run_log.lines)
    assert landed.is_set()
    # Once the run has the file, its holder record no longer blames the notebook.
    assert not Path(f"{store.path}.holder").exists()


def test_a_slow_wait_for_our_own_holder_is_logged_with_holder_and_way_out(store):
    log = RecordingLog()
    waiter = wh.Warehouse(store.path, slow_wait_s=SHORT, wait_log=log)
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.connect("dagster run 5e6f7a8b: write wearable_data"):
            inside.set()
            log.waiting.wait(30)  # lets go only once the waiter has said it waits
            leave.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with waiter.connect("api: connections", timeout_s=60):
        pass
    holder.join(30)
    assert leave.is_set()
    first = next(line for line in log.lines if "waiting" in line)
    assert first.startswith("api: connections: waiting ") and f"so far for warehouse {store.path}" in first
    assert "held by pid " in first and "(dagster run 5e6f7a8b: write wearable_data)" in first
    assert "the way out: wait for it to finish its block" in first
    assert "not oura_assets" not in first
    assert any("api: connections: waited " in line and "got it" in line for line in log.lines)


def test_a_quick_wait_logs_nothing(store):
    log = RecordingLog()
    patient = wh.Warehouse(store.path, slow_wait_s=60, wait_log=log)
    with patient.connect("api: connections"):
        pass
    assert log.lines == []


def test_sync_patients_reports_its_waits_to_the_run_log(store):
    """`sync_patients` hands the warehouse its `progress` log, so a wait shows where the run is read."""
    progress = RecordingLog()
    inside = threading.Event()

    def hold() -> None:
        with store.connect("backfill 9c0d: rebuild"):
            inside.set()
            progress.waiting.wait(30)

    class BrokenClient:
        def documents(self, collection, start, end):
            raise RuntimeError("never reached Oura")

        def heartrate(self, start, end):
            raise RuntimeError("never reached Oura")

        heartrate_columns = heartrate

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    outcome = sync_patients(
        patients=["p1"],
        client_for=lambda _: BrokenClient(),  # type: ignore[arg-type,return-value]
        warehouse=store,
        start=date(2024, 6, 10),
        end=date(2024, 6, 10),
        run_id="run-contention",
        progress=progress,
    )
    holder.join(30)
    assert outcome.patients_failed == 1  # the client's bug, recorded once the warehouse was free
    assert any("waiting" in line and "(backfill 9c0d: rebuild)" in line for line in progress.lines)
    # The run's first warehouse transaction (reading the patients' granted scopes) is the one that waited.
    assert any("read granted scopes: waited " in line for line in progress.lines)
