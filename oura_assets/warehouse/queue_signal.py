"""A file beside the warehouse whose modification time says "a sync request was queued".

The `oura_sync_requests` sensor is what turns queued requests into runs, and it ticks every few seconds so a
new patient or a webhook's sync starts at once. Reading the queue means opening the warehouse, which takes its
one writer lock (and, encrypted, attaches the file): doing that every few seconds would make every run and API
call queue behind the sensor. So whoever queues a request touches `<warehouse>.sync-queue` once the request is
committed, and the sensor opens the warehouse only when that stamp moved since its last look (or when its
periodic safety check is due). The file holds nothing; only its mtime matters. Touching it is best effort: a
failure costs latency (the sensor's safety check still finds the request), never a request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def sync_queue_signal_path(warehouse_path: str | Path) -> Path:
    text = str(warehouse_path)
    if text.startswith("ducklake:"):
        # A DuckLake has no file to sit beside: the stamp goes to this host's temp folder, named by the lake
        # (the sensor and an API on the same host meet there; elsewhere the periodic check does the job).
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"oura-assets-lake-{digest}.sync-queue"
    return Path(f"{warehouse_path}.sync-queue")


def signal_sync_queued(warehouse_path: str | Path) -> None:
    """Move the stamp: call after the transaction that queued a sync request committed."""
    path = sync_queue_signal_path(warehouse_path)
    try:
        path.touch(mode=0o600)
        os.utime(path)
    except OSError as exc:
        log.warning(
            "could not touch %s (%s); the sync sensor's periodic check will pick the request up", path, exc
        )


def sync_queue_stamp(warehouse_path: str | Path) -> int:
    """The stamp (mtime in ns), 0 when the file does not exist yet."""
    try:
        return sync_queue_signal_path(warehouse_path).stat().st_mtime_ns
    except OSError:
        return 0
