"""Short garbage-collection pauses for a process whose main job is serving the simulator.

Why: the simulator keeps what it generates (documents, heart-rate days, sleep periods) in caches that grow to
hundreds of thousands of objects over a night of 500 patients. Python's full (generation 2) collection walks
every one of them, and while it does the whole process stands still: measured in the nightly benchmark, a
1.2 s pause 384 s into the run. Requests that reached the socket during the pause were then read together, so
a rolling 1-second rate window saw them as one burst and answered 429 to requests the client had spread out
(`bench/README.md`, "The late burst"). Real Oura does not stop to collect its garbage; the simulator should
not make its clients pay for its own.

How: every `interval_s`, `gc.freeze()` moves every object alive then out of the collector's reach (the
caches, which live as long as the process). A full collection then walks only what was allocated since the
last freeze, so its pause stays short however large the caches grow. The price: a reference cycle made of
frozen objects that later becomes garbage is never collected; the simulator's cached data does not become
garbage, which is why this is for simulator processes only (a test process, whose Dagster objects come and
go in cycles, must not use it). Nothing in the standard library or the stack does this periodically; it is
a few lines.
"""

from __future__ import annotations

import gc
import threading
import time

_lock = threading.Lock()
_freezer: threading.Thread | None = None


def keep_gc_pauses_short(interval_s: float = 30.0) -> None:
    """Freeze the heap every `interval_s` in a daemon thread (once per process; later calls do nothing)."""
    global _freezer
    with _lock:
        if _freezer is not None:
            return
        _freezer = threading.Thread(target=_freeze_every, args=(interval_s,), name="simulator-gc-freeze")
        _freezer.daemon = True
        _freezer.start()


def _freeze_every(interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        gc.freeze()
