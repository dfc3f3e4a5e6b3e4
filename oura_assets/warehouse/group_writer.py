"""`GroupWriter`: one thread that runs a run's write jobs, as many as have queued up, in one transaction.

Why: on a DuckDB file every transaction takes the cross-process writer lock and attaches and detaches the
file (the detach checkpoints). A run whose fetch threads each landed their own patient spent most of its
time with those threads queued at the lock (a soak night at 100 patients: "waited 15 s for warehouse" per
patient), so fetching stopped while one patient committed, and the fixed cost of a transaction was paid
once per patient. Here the fetch threads hand what they fetched to `submit` and go on fetching; the writer
lands whatever has queued up, up to `max_group` jobs, in one transaction.

Every job still lands whole or not at all (the group commits together), and one job's failure stays its
own: a group that raises is rolled back and run again one job per transaction, so only the job that fails
alone reports the error (the others land). `WarehouseBusy` (the lock not had in time, a DuckLake conflict
lost every try) is everyone's in the group: it is reported to each job, without trying them one by one.
Jobs may run more than once (a DuckLake conflict, a group's retry), so they keep their effects inside the
transaction, as every `Warehouse.attempts` block does.

When jobs arrive slowly (a run paced at Oura's rate limit hands over about one patient a second), "whatever
has queued up" is one or two jobs, and each group pays the transaction's fixed cost: on a DuckDB file that is
mostly the checkpoint when the file is detached, and it grows with the warehouse (measured on a 3.6 GB
warehouse of 300 patients x 1 year: 1.2-1.7 s a transaction that touched six tables, against 0.15-0.25 s for
the same statements without the checkpoint). So while the producer says more jobs are on their way
(`more_coming`), the writer waits for them, up to `LINGER_FACTOR` times what its last transaction took (at
most `MAX_LINGER_S`): a cheap transaction is barely delayed, and an expensive one is paid for many jobs. It
waits without the writer lock, so the fetch threads (which read tokens through it) are not held up.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import duckdb

from oura_assets.warehouse.database import WarehouseAccess
from oura_assets.warehouse.encryption import single_threaded
from oura_assets.warehouse.lock import WarehouseBusy

T = TypeVar("T")
logger = logging.getLogger(__name__)

# A group's hold of the writer lock grows with its size; 25 patients' raw windows take a second or two, short
# beside the lock timeout other writers (the API, sensors) wait with.
MAX_GROUP = 25
# How long the writer waits for more jobs, as a multiple of its last transaction's duration, and at most.
LINGER_FACTOR = 4.0
MAX_LINGER_S = 10.0


# How much lower than the rest of the process a run's fetch threads run (Linux's per-thread nice, 0-19).
FETCH_THREAD_NICENESS = 10


def yield_to_the_writer() -> None:
    """Lower the calling thread's OS priority below the writer thread's (Linux only): for the threads that
    feed a `GroupWriter` (`sync_patients`' fetch pool calls it as its initializer).

    The writer is the run's one serial step; the fetch threads (four by default) parse beside it on the same
    cores. At equal priority a heart-rate load's writer got about a fifth of two cores, and the fetch threads
    then sat idle waiting for it to make room: 474-489 k samples/s (bench `loading`'s pipeline, 200 patients x
    90 days, an idle 2-core host). With the fetch threads at nice +10 the writer has a core whenever it wants
    one and they take the rest: 580-584 k (alternated twice). On Linux `setpriority` on a thread id changes
    that thread only; elsewhere a thread id is no process id, so nothing is done. Never raised back: the
    pool's threads end with the run.
    """
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + FETCH_THREAD_NICENESS
        )
    except OSError:
        logger.debug("could not lower the priority of fetch thread %d", thread, exc_info=True)


def group_size(warehouse: object, size: int = MAX_GROUP) -> int:
    """`size` on a DuckDB file, 1 on a DuckLake: a lake has no lock or attach to pay per transaction, and
    DuckLake conflicts per table, so a big transaction beside other writers (shard runs) only loses more
    often and redoes more when it does."""
    return 1 if getattr(warehouse, "lake", None) is not None else size


@dataclass
class _Job(Generic[T]):
    write: Callable[[duckdb.DuckDBPyConnection], T]
    future: Future[T]
    about: Any = None


class GroupWriter:
    """Runs submitted `write(conn)` jobs on one thread, grouped into transactions (see the module docstring).

    `describe(n)` words a group's purpose for the writer lock's holder record ("dagster run 1a2b3c4d: raw
    documents for 3 patient(s)"). Use as a context manager: leaving it waits for every job submitted.
    `prepare(conn, abouts)`, when given, runs first in every group's transaction (each try, and each job's
    own when a group is run one by one) with what each of its jobs is `about` (as given to `submit`), so
    a read the jobs all need is one query for the group rather than one per job. `more_coming()`, when
    given, says whether more jobs are on their way (the run's fetches in flight): while it does, a group
    waits for them (see the module docstring); without it, a group is what has queued up.
    """

    def __init__(
        self,
        warehouse: WarehouseAccess,
        describe: Callable[[int], str],
        *,
        max_group: int = MAX_GROUP,
        name: str = "warehouse-writer",
        prepare: Callable[[duckdb.DuckDBPyConnection, list[Any]], None] | None = None,
        more_coming: Callable[[], bool] | None = None,
    ) -> None:
        if max_group < 1:
            raise ValueError(f"max_group must be at least 1, got {max_group}")
        self._warehouse = warehouse
        self._describe = describe
        self._max_group = max_group
        self._prepare = prepare
        self._more_coming = more_coming
        self._last_land_s = 0.0
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.groups = 0
        self._thread.start()

    def submit(self, write: Callable[[duckdb.DuckDBPyConnection], T], about: Any = None) -> Future[T]:
        """Queue `write`; its future holds what it returned once its group committed, or why it failed."""
        if self._closed:
            raise RuntimeError("this GroupWriter is closed")
        job: _Job[T] = _Job(write, Future(), about)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            deadline = time.monotonic() + min(MAX_LINGER_S, LINGER_FACTOR * self._last_land_s)
            while len(group) < self._max_group:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._more_coming is None or not self._more_coming():
                        break
                    try:  # in short slices: the producer may stop expecting more (a pause, a last fetch)
                        job = self._queue.get(timeout=min(remaining, 0.05))
                    except queue.Empty:
                        continue
                if job is None:
                    stopping = True
                    break
                group.append(job)
            self._land([j for j in group if j.future.set_running_or_notify_cancel()])

    def _land(self, group: list[_Job[Any]]) -> None:
        if not group:
            return
        began = time.monotonic()
        try:
            values: list[Any] = []
            # One DuckDB thread for the group, its open and its close (the checkpoint) included: see
            # `single_threaded`. The fetch threads are the run's parallelism.
            with single_threaded():
                for attempt in self._warehouse.attempts(self._describe(len(group))):
                    with attempt as conn:
                        if self._prepare is not None:
                            self._prepare(conn, [job.about for job in group])
                        values = [job.write(conn) for job in group]
        except WarehouseBusy as exc:
            for job in group:
                job.future.set_exception(exc)
            return
        except BaseException as exc:  # handed to the jobs' futures, never lost
            if len(group) == 1 or not isinstance(exc, Exception):
                for job in group:
                    job.future.set_exception(exc)
                return
            # One job broke the group: run them one by one, so only that one fails.
            for job in group:
                self._land([job])
            return
        self._last_land_s = time.monotonic() - began
        self.groups += 1
        for job, value in zip(group, values, strict=True):
            job.future.set_result(value)
