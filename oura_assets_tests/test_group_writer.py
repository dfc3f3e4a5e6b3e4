"""`GroupWriter`: queued write jobs land several per transaction, each whole, one job's failure its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from oura_assets import warehouse as wh
from oura_assets.warehouse.group_writer import GroupWriter


class CountingWarehouse(wh.Warehouse):
    """Notes the purpose of every transaction opened."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.purposes: list[str] = []

    def transaction(self, purpose, timeout_s=None):
        self.purposes.append(purpose)
        return super().transaction(purpose, timeout_s)


@pytest.fixture
def store(tmp_path: Path) -> CountingWarehouse:
    store = CountingWarehouse(tmp_path / "warehouse.duckdb")
    with store.connect("test: table") as conn:
        conn.execute("CREATE TABLE main.landed (job INTEGER, part INTEGER)")
    store.purposes.clear()
    return store


def landed(store: wh.Warehouse) -> list[tuple[int, int]]:
    with store.connect("test: read") as conn:
        return conn.execute("SELECT job, part FROM main.landed ORDER BY job, part").fetchall()


def job(number: int, fail: bool = False):
    def write(conn):
        conn.execute("INSERT INTO main.landed VALUES (?, 1)", [number])
        if fail:
            raise ValueError(f"job {number} is broken")
        conn.execute("INSERT INTO main.landed VALUES (?, 2)", [number])
        return number

    return write


def blocking(started: threading.Event, gate: threading.Event):
    def write(conn):
        started.set()
        return gate.wait(10)

    return write


def test_jobs_queued_together_land_in_one_transaction(store):
    started, gate = threading.Event(), threading.Event()
    with GroupWriter(store, lambda n: f"test: {n} job(s)") as writer:
        blocker = writer.submit(blocking(started, gate))  # holds the writer while the others queue
        assert started.wait(10)
        futures = [writer.submit(job(n)) for n in range(5)]
        gate.set()
        assert blocker.result(10) is True
        assert [f.result(10) for f in futures] == list(range(5))
    assert landed(store) == [(n, part) for n in range(5) for part in (1, 2)]
    assert store.purposes == ["test: 1 job(s)", "test: 5 job(s)"]


def test_a_failing_job_fails_alone_and_never_lands_half(store):
    started, gate = threading.Event(), threading.Event()
    with GroupWriter(store, lambda n: f"test: {n} job(s)") as writer:
        writer.submit(blocking(started, gate))
        assert started.wait(10)
        futures = [writer.submit(job(n, fail=n == 2)) for n in range(4)]
        gate.set()
        assert [f.result(10) for f in futures if f is not futures[2]] == [0, 1, 3]
        with pytest.raises(ValueError, match="job 2 is broken"):
            futures[2].result(10)
    # Job 2's first part was rolled back with it; the others landed whole.
    assert landed(store) == [(n, part) for n in (0, 1, 3) for part in (1, 2)]
    # The group of four failed once, then each job ran alone.
    assert store.purposes == ["test: 1 job(s)", "test: 4 job(s)", *["test: 1 job(s)"] * 4]


def test_a_busy_warehouse_fails_every_job_of_the_group_without_retrying_each(store):
    hold_started, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.connect("backfill: rebuild"):
            hold_started.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert hold_started.wait(10)
    impatient = CountingWarehouse(store.path, lock_timeout_s=0.3)
    try:
        with GroupWriter(impatient, lambda n: f"test: {n} job(s)", max_group=2) as writer:
            futures = [writer.submit(job(n)) for n in range(2)]
            for future in futures:
                with pytest.raises(wh.WarehouseBusy):
                    future.result(10)
    finally:
        release.set()
        holder.join(30)
    assert len(impatient.purposes) <= 2  # one try per group, not one more per job
    assert landed(store) == []


def test_prepare_runs_first_in_each_groups_transaction_and_again_for_each_job_alone(store):
    started, gate = threading.Event(), threading.Event()
    prepared: list[list[object]] = []

    def prepare(conn, abouts):
        conn.execute("INSERT INTO main.landed VALUES (-1, 0)")  # inside the group's transaction
        prepared.append(abouts)

    with GroupWriter(store, lambda n: f"test: {n} job(s)", prepare=prepare) as writer:
        writer.submit(blocking(started, gate), about="blocker")
        assert started.wait(10)
        futures = [writer.submit(job(n, fail=n == 1), about=f"job {n}") for n in range(3)]
        gate.set()
        with pytest.raises(ValueError, match="job 1 is broken"):
            futures[1].result(10)
    assert prepared == [["blocker"], ["job 0", "job 1", "job 2"], ["job 0"], ["job 1"], ["job 2"]]
    # Rolled back with the failed group and with job 1 alone: prepare's write lands with each commit only.
    assert landed(store) == [(-1, 0)] * 3 + [(n, part) for n in (0, 2) for part in (1, 2)]


def threads_of(conn) -> int:
    return int(conn.execute("SELECT current_setting('threads')").fetchone()[0])


def test_a_group_runs_on_one_duckdb_thread_and_the_instance_gets_its_threads_back(store):
    with store.connect("test: threads before") as conn:
        before = threads_of(conn)
        conn.execute("SET threads = 3")  # not DuckDB's default: the writer must restore what it found
    try:
        with GroupWriter(store, lambda n: f"test: {n} job(s)") as writer:
            seen = writer.submit(threads_of).result(10)
        with store.connect("test: threads after") as conn:
            assert (seen, threads_of(conn)) == (1, 3)
    finally:
        with store.connect("test: threads reset") as conn:
            conn.execute(f"SET threads = {before}")


def test_one_thread_holds_until_the_last_of_overlapping_blocks_leaves(store):
    from oura_assets.warehouse.encryption import single_threaded

    with store.connect("test: threads before") as conn:
        before = threads_of(conn)
    with single_threaded():
        with single_threaded():
            pass
        with store.connect("test: inside the outer block") as conn:
            assert threads_of(conn) == 1  # the inner block's exit did not restore it under the outer one
    with store.connect("test: threads after") as conn:
        assert threads_of(conn) == before


def slow(number: int, seconds: float):
    """A job whose transaction takes `seconds` (the fixed cost the writer's lingering pays for)."""

    def write(conn):
        conn.execute("INSERT INTO main.landed VALUES (?, 1)", [number])
        time.sleep(seconds)
        return number

    return write


def trickle(writer: GroupWriter, numbers: range, every_s: float) -> list:
    """Submit a job every `every_s` (a run paced at Oura's limit hands over a patient about every second)."""
    futures = []
    for number in numbers:
        futures.append(writer.submit(job(number)))
        time.sleep(every_s)
    return futures


@pytest.mark.parametrize("expecting", [True, False])
def test_jobs_arriving_slowly_wait_for_each_other_while_more_are_coming(store, expecting):
    coming = threading.Event()
    coming.set()
    with GroupWriter(
        store, lambda n: f"test: {n} jobs", more_coming=coming.is_set if expecting else None
    ) as writer:
        writer.submit(slow(0, 0.2)).result(timeout=10)  # its transaction took 0.2 s: linger up to 0.8 s
        futures = trickle(writer, range(1, 6), every_s=0.05)
        coming.clear()
        assert [f.result(timeout=10) for f in futures] == [1, 2, 3, 4, 5]
    groups = len(store.purposes)
    # Lingering, the five trickled jobs share one transaction; without a producer that says more are coming,
    # the writer lands each as it arrives (the jobs are far cheaper than the 50 ms between them).
    assert groups == (2 if expecting else 6), store.purposes
    assert sorted({job for job, _ in landed(store)}) == [0, 1, 2, 3, 4, 5]


def test_a_lone_job_is_not_held_back_when_nothing_more_is_coming(store):
    with GroupWriter(store, lambda n: f"test: {n} jobs", more_coming=lambda: False) as writer:
        writer.submit(slow(0, 0.3)).result(timeout=10)  # a slow transaction: lingering would be 1.2 s
        began = time.monotonic()
        assert writer.submit(job(1)).result(timeout=10) == 1
        assert time.monotonic() - began < 1.0
