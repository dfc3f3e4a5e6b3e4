"""The simulator's two clocks: the settable data clock and the auth clock that expires tokens and codes.

Two clocks, on purpose. The data clock (`now()`) decides which documents exist and is settable, so a test can
stand at any moment of a simulated user's life. Tokens, codes and rate-limit windows run on the wall clock
(plus `advance_auth`), like Oura's, so moving the data clock never expires a token behind a client's back.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class Clocks:
    """Both clocks; safe to read and set from uvicorn's thread and the test's at once."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        # The data clock: `None` follows the wall clock; otherwise it was `_base_sim` at `_base_real`.
        self._base_sim = start
        self._base_real = time.time()
        self._frozen = False
        self._auth_offset_s = 0.0

    def now(self) -> datetime:
        """The data clock (UTC)."""
        with self._lock:
            if self._base_sim is None:
                return datetime.now(UTC)
            if self._frozen:
                return self._base_sim
            elapsed = time.time() - self._base_real
            return datetime.fromtimestamp(self._base_sim.timestamp() + elapsed, UTC)

    def set(self, now: datetime | None, *, frozen: bool = False) -> None:
        """Move the data clock to `now` (it keeps running unless `frozen`); `None` follows the wall clock."""
        if now is not None and now.tzinfo is None:
            raise ValueError("the data clock needs a timezone-aware datetime")
        with self._lock:
            self._base_sim = None if now is None else now.astimezone(UTC)
            self._base_real = time.time()
            self._frozen = frozen and now is not None

    def wall(self) -> float:
        """Seconds since the epoch on the auth clock (wall clock plus `advance_auth`)."""
        with self._lock:
            return time.time() + self._auth_offset_s

    def advance_auth(self, seconds: float) -> None:
        with self._lock:
            self._auth_offset_s += seconds

    def reset_auth(self) -> None:
        """The auth clock back on the wall clock."""
        with self._lock:
            self._auth_offset_s = 0.0
