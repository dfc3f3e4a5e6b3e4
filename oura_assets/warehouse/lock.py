"""The cross-process writer lock: one process (and one thread) at a time opens the DuckDB file.

DuckDB lets one process at a time open a file read-write, and a second one fails at once with an IOException.
Here the connection API, Dagster sensors, schedule runs and backfill runs all share one file, so instead of
each of them retrying blindly (as `dagster_duckdb.DuckDBResource` does), every process queues on a
cross-process `filelock` beside the file, records who holds it and why in `<file>.holder`, and holds it only
for one short block; a writer that just let go steps aside when someone is waiting, so a long run of short
transactions cannot starve an API request. A waiter that runs out of patience gets `WarehouseBusy`, whose
message names the holder, instead of a stack trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from oura_assets.warehouse.waits import WaitWatch, seconds, way_out

try:
    import fcntl
except ImportError:  # Windows: no waiter hand-off, the lock itself still works
    fcntl = None  # type: ignore[assignment]

DEFAULT_RETRY_AFTER_S = 5.0
_POLL_S = 0.02
_HANDOFF_S = 4 * _POLL_S


class WarehouseBusy(RuntimeError):
    """The warehouse stayed locked past the caller's wait. The message names the holder; retry later."""

    def __init__(
        self,
        path: str,
        holder: WarehouseHolder | None,
        waited_s: float,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
    ):
        self.path = path
        self.holder = holder
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s
        who = holder.describe() if holder else "an unknown process"
        # Only a program outside oura_assets needs a person to act; our own holders let go by themselves.
        hint = f"; {way_out(holder)}" if holder is not None and holder.outside_oura_assets() else ""
        super().__init__(f"warehouse {path} is busy: held by {who}{hint}; gave up after {seconds(waited_s)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.holder, self.waited_s, self.retry_after_s))


@dataclass(frozen=True)
class WarehouseHolder:
    """Who holds the warehouse: read from `<file>.holder`, or parsed from DuckDB's own lock error.

    `foreign`: a process outside oura_assets (a notebook, the DuckDB CLI) holds DuckDB's own file lock; its
    `purpose` is the program DuckDB named. `blocked_by`: our holder is itself stuck opening the file behind
    such a program, so whoever queues behind our holder is told about the program, not just our holder.
    """

    pid: int | None
    purpose: str
    host: str | None = None
    since: datetime | None = None
    foreign: bool = False
    blocked_by: WarehouseHolder | None = None

    def outside_oura_assets(self) -> bool:
        """True when the one to act on is a program outside oura_assets."""
        return self.foreign or (self.blocked_by is not None and self.blocked_by.outside_oura_assets())

    def held_for_s(self, now: datetime | None = None) -> float | None:
        if self.since is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.since).total_seconds())

    def describe(self) -> str:
        if self.foreign:
            pid = f"pid {self.pid}" if self.pid is not None else "DuckDB did not say which pid"
            return (
                f"another program, not oura_assets: {pid} ({self.purpose}), which has the DuckDB file open "
                "outside oura_assets' lock (e.g. a notebook or the DuckDB CLI)"
            )
        who = f"pid {self.pid}" if self.pid is not None else "a process"
        if self.host and self.host != socket.gethostname():
            who += f" on {self.host}"
        held = self.held_for_s()
        own = f"{who} ({self.purpose})" + (f" for {seconds(held)}" if held is not None else "")
        if self.blocked_by is not None:
            return (
                f"{self.blocked_by.describe()}; {own} holds oura_assets' lock while it waits for that program"
            )
        return own

    def to_json(self) -> str:
        return json.dumps(self._to_dict())

    def _to_dict(self) -> dict[str, Any]:
        since = self.since.isoformat() if self.since else None
        data: dict[str, Any] = {"pid": self.pid, "host": self.host, "purpose": self.purpose, "since": since}
        if self.foreign:
            data["foreign"] = True
        if self.blocked_by is not None:
            data["blocked_by"] = self.blocked_by._to_dict()
        return data

    @classmethod
    def from_json(cls, text: str) -> WarehouseHolder:
        return cls._from_dict(json.loads(text))

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> WarehouseHolder:
        since = datetime.fromisoformat(data["since"]) if data.get("since") else None
        blocked_by = cls._from_dict(data["blocked_by"]) if isinstance(data.get("blocked_by"), dict) else None
        return cls(
            pid=data.get("pid"),
            purpose=str(data.get("purpose", "")),
            host=data.get("host"),
            since=since,
            foreign=bool(data.get("foreign", False)),
            blocked_by=blocked_by,
        )


class _ProcessGuard:
    """This process's side of the writer lock on one file: threads queue here, then on the file lock.

    `filelock` is re-entrant per thread (or per process with thread_local=False), so on its own it would let
    two threads of the API in at once; the RLock serializes threads and keeps one thread's nesting harmless.

    Neither an RLock nor a polled file lock is fair: a run that writes patient after patient back to back
    takes the lock again before a waiting API request's next poll, and starves it. So waiters make
    themselves known (threads with a counter, processes with a shared `flock` on `<file>.waiters`, which
    the OS drops if they die), and whoever released the lock a moment ago and sees a waiter steps aside
    for `_HANDOFF_S` before taking it again.
    """

    def __init__(self, path: Path):
        self.thread_lock = threading.RLock()
        self.file_lock = filelock.FileLock(f"{path}.lock", thread_local=False)
        self.waiters_path = f"{path}.waiters"
        self.threads_waiting = 0
        self.released_at = -_HANDOFF_S
        self.owner: int | None = None
        self._counter = threading.Lock()

    def step_aside_if_others_wait(self) -> None:
        if self.owner == threading.get_ident() or time.monotonic() - self.released_at >= _HANDOFF_S:
            return
        if self.threads_waiting > 0 or self._other_process_waits():
            time.sleep(_HANDOFF_S)

    def step_aside_for_other_processes(self) -> None:
        """Called holding the thread lock: a thread that queued behind a sibling (and so skipped the check
        above) must not hand the file lock straight on while another process waits for it."""
        if time.monotonic() - self.released_at < _HANDOFF_S and self._other_process_waits():
            time.sleep(_HANDOFF_S)

    @contextlib.contextmanager
    def waiting_thread(self) -> Iterator[None]:
        with self._counter:
            self.threads_waiting += 1
        try:
            yield
        finally:
            with self._counter:
                self.threads_waiting -= 1

    @contextlib.contextmanager
    def waiting_process(self) -> Iterator[None]:
        """Hold a shared lock on the waiters file while this process waits for the writer lock."""
        if fcntl is None:
            yield
            return
        fd = os.open(self.waiters_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _other_process_waits(self) -> bool:
        if fcntl is None:
            return False
        fd = os.open(self.waiters_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


_guards: dict[str, _ProcessGuard] = {}
_guards_lock = threading.Lock()


def _forget_process_state() -> None:
    """A forked child must not inherit the parent's lock objects (possibly held by a thread it lacks)."""
    global _guards_lock
    _guards_lock = threading.Lock()
    _guards.clear()


os.register_at_fork(after_in_child=_forget_process_state)


def _guard_for(path: Path) -> _ProcessGuard:
    key = str(path)
    with _guards_lock:
        guard = _guards.get(key)
        if guard is None:
            guard = _guards[key] = _ProcessGuard(path)
        return guard


@dataclass(frozen=True)
class Wait:
    """When a caller began waiting for the lock and when it gives up: opening the file shares the budget.

    `watch` reports a slow wait while it lasts, so the waiting loops block in slices that end at its next
    report time.
    """

    began: float
    deadline: float
    watch: WaitWatch | None = None

    def waited_s(self) -> float:
        return time.monotonic() - self.began

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def slice_s(self) -> float:
        """How long to block in one go: until the deadline, or the watch's next report if sooner."""
        remaining = self.remaining_s()
        return min(remaining, self.watch.until_next_report_s()) if self.watch else remaining

    def still_waiting(self, holder: Callable[[], WarehouseHolder | None] | WarehouseHolder | None) -> None:
        if self.watch is not None:
            self.watch.still_waiting(holder)

    def give_up(self, holder: WarehouseHolder | None) -> None:
        if self.watch is not None:
            self.watch.holder = holder or self.watch.holder
            self.watch.finished(got_it=False)


class WriterLock:
    """The writer lock on the DuckDB file `resolved`; `display_path` is how `WarehouseBusy` names the file."""

    def __init__(self, resolved: Path, display_path: str):
        self.resolved = resolved
        self.display_path = display_path
        self.holder_path = Path(f"{resolved}.holder")

    @contextlib.contextmanager
    def hold(self, purpose: str, timeout_s: float, watch: WaitWatch | None = None) -> Iterator[Wait]:
        """Hold the lock for the block, recording `purpose` as the holder; `WarehouseBusy` after `timeout_s`.

        Re-entrant within a thread: a nested block shares the outer one's hold (and holder record). `watch`
        reports the wait if it runs long.
        """
        began = time.monotonic()
        wait = Wait(began, began + max(0.0, timeout_s), watch)
        self.resolved.parent.mkdir(parents=True, exist_ok=True)
        guard = _guard_for(self.resolved)
        guard.step_aside_if_others_wait()
        with guard.waiting_thread():
            while not guard.thread_lock.acquire(timeout=wait.slice_s()):
                if wait.remaining_s() <= 0:
                    raise self.give_up(wait, self.read_holder())
                wait.still_waiting(self.read_holder)
        try:
            outermost = guard.owner is None
            if outermost:
                guard.step_aside_for_other_processes()
            self._acquire_file_lock(guard, wait)
            try:
                if outermost:
                    guard.owner = threading.get_ident()
                    self._write_holder(purpose)
                yield wait
            finally:
                if outermost:
                    with contextlib.suppress(OSError):
                        self.holder_path.unlink()
                guard.file_lock.release()
                if outermost:
                    guard.owner = None
                    guard.released_at = time.monotonic()
        finally:
            guard.thread_lock.release()

    def busy(self, holder: WarehouseHolder | None, waited_s: float) -> WarehouseBusy:
        return WarehouseBusy(self.display_path, holder, waited_s, DEFAULT_RETRY_AFTER_S)

    def give_up(self, wait: Wait, holder: WarehouseHolder | None) -> WarehouseBusy:
        """The `WarehouseBusy` to raise when `wait` runs out, after its watch has logged the end of it."""
        wait.give_up(holder)
        return self.busy(holder, wait.waited_s())

    def note_blocked_by(self, blocker: WarehouseHolder | None) -> None:
        """Record in our holder file that we hold the lock but wait for `blocker` (None: no longer)."""
        holder = self.read_holder()
        if holder is None or holder.pid != os.getpid() or holder.blocked_by == blocker:
            return
        self._write(dataclasses.replace(holder, blocked_by=blocker))

    def read_holder(self) -> WarehouseHolder | None:
        try:
            return WarehouseHolder.from_json(self.holder_path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _acquire_file_lock(self, guard: _ProcessGuard, wait: Wait) -> None:
        try:
            guard.file_lock.acquire(timeout=0)
            return
        except filelock.Timeout:
            pass
        with guard.waiting_process():
            while True:
                try:
                    guard.file_lock.acquire(timeout=wait.slice_s(), poll_interval=_POLL_S)
                    return
                except filelock.Timeout:
                    if wait.remaining_s() <= 0:
                        raise self.give_up(wait, self.read_holder()) from None
                    wait.still_waiting(self.read_holder)

    def _write_holder(self, purpose: str) -> None:
        self._write(
            WarehouseHolder(
                pid=os.getpid(), purpose=purpose, host=socket.gethostname(), since=datetime.now(UTC)
            )
        )

    def _write(self, holder: WarehouseHolder) -> None:
        tmp = self.holder_path.with_name(f"{self.holder_path.name}.{os.getpid()}.tmp")
        tmp.write_text(holder.to_json())
        tmp.replace(self.holder_path)
