"""Telling a wait for the warehouse as it is: who holds the file, for how long, and the way out.

A run that waits minutes for the DuckDB file and says nothing looks hung, and a wait blamed on the wrong
process sends the operator after the wrong one. So a wait past `slow_wait_s` (5 s unless set) is logged while
it lasts (at 5 s, then 10, 20, 40 ... so a long wait writes a handful of lines, not one per poll) and once
more when it ends, through the log the caller passes (a run's `context.log`) or this module's logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from oura_assets.warehouse.lock import WarehouseHolder

logger = logging.getLogger(__name__)

SLOW_WAIT_S = 5.0


class WaitLog(Protocol):
    """Where wait reports go: a `logging.Logger`, or Dagster's `context.log`."""

    def warning(self, msg: str) -> Any: ...


def seconds(value: float) -> str:
    """A wait or hold time as people read it in a message: `0.4 s`, `12 s`."""
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def way_out(holder: WarehouseHolder | None) -> str:
    """What the operator can do about `holder`, in one clause."""
    if holder is not None and holder.outside_oura_assets():
        return (
            "the way out: close that program's connection to the file (a notebook's duckdb.connect, the "
            "DuckDB CLI), and point it at the read-only analytics snapshot (OURA_ASSETS_ANALYTICS) instead"
        )
    if holder is not None and holder.pid is not None:
        return f"the way out: wait for it to finish its block, or stop pid {holder.pid} if it is stuck"
    return "the way out: wait, or find the process that has the file open"


class WaitWatch:
    """Reports one caller's wait for the warehouse once it has lasted `threshold_s` (see the module)."""

    def __init__(
        self, display_path: str, purpose: str, log: WaitLog | None, threshold_s: float = SLOW_WAIT_S
    ):
        self.display_path = display_path
        self.purpose = purpose
        self.log = log if log is not None else logger
        self.threshold_s = threshold_s
        self.began = time.monotonic()
        self.next_report_s = threshold_s
        self.holder: WarehouseHolder | None = None
        self.reported = False

    def waited_s(self) -> float:
        return time.monotonic() - self.began

    def until_next_report_s(self) -> float:
        """How long the caller may block before it should call `still_waiting` again."""
        return max(0.0, self.next_report_s - self.waited_s())

    def still_waiting(self, holder: Callable[[], WarehouseHolder | None] | WarehouseHolder | None) -> None:
        """Called from the caller's wait loop: log the wait when it reaches the next report time."""
        waited = self.waited_s()
        if waited < self.next_report_s:
            return
        self.holder = (holder() if callable(holder) else holder) or self.holder
        while self.next_report_s <= waited:
            self.next_report_s *= 2
        self.reported = True
        self.log.warning(
            f"{self.purpose}: waiting {seconds(waited)} so far for warehouse {self.display_path}, "
            f"held by {describe(self.holder)}; {way_out(self.holder)}"
        )

    def finished(self, *, got_it: bool) -> None:
        """Called once the wait ends: a wait past the threshold is logged with how long it took."""
        waited = self.waited_s()
        if waited < self.threshold_s and not self.reported:
            return
        outcome = "got it" if got_it else "gave up"
        self.log.warning(
            f"{self.purpose}: waited {seconds(waited)} for warehouse {self.display_path} "
            f"(held by {describe(self.holder)}); {outcome}"
        )


def describe(holder: WarehouseHolder | None) -> str:
    return holder.describe() if holder is not None else "an unknown process"
