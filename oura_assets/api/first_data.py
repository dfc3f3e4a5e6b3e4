"""The first-data lane: a new patient's most recent days synced by a Dagster run the API executes itself.

A patient who has just connected their ring looks for last night's sleep at once. Through the queue, their
first run waits for the `oura_sync_requests` sensor (the daemon evaluates sensors every 5 s at best), the run
queue, and a run worker process that starts Python, imports Dagster and loads the code location: 15-25 s on
an idle 2-core host and over a minute on a busy one (`bench/bench_freshness.py`), for a run whose own work is
a second or two. So the API, whose process has all of that loaded already, executes that one small run
itself, in a worker thread, as soon as the callback has answered:

- it is a real run on the Dagster instance (`DAGSTER_HOME`) of the `oura_sync_fast_lane` job (`defs/jobs.py`:
  the raw assets with their blocking checks, and the patient graph), executed in process
  (`execute_in_process`, as `make demo` does): visible in the UI with its logs, materializations and checks,
  tagged `oura_assets/trigger=first_data`, its `wearable_sync` event written by the usual sensor. Dagster
  stays the orchestrator of record; only the launch is local. The graph's warning checks and the analytics
  snapshot are left to the full run that follows over the same days;
- it carries the first-data sync request the callback queued (today and the two days before), which the
  callback reserves (`running`) in the same transaction so the sensor does not launch it a second time;
  if the run cannot be started the request is released to the queue and the sensor runs it as usual;
- the 30-day initial sync still goes through the sensor and the run queue, which runs one run per patient
  at a time (`dagster.yaml`), so it starts once this run has finished.

A webhook event's targeted sync (a few days of one patient) takes the same lane when the receiver queued a new
request for it: Oura's event reaches the warehouse in seconds instead of waiting for the sensor and a worker.
When the warehouse does not hold the event's document (a create), the lane first fetches it alone
(`OuraClient.document`) to learn its day and narrows the request to that day; Oura may answer 404 right after
the event, and then the run syncs the days around the event instead, recorded on the event
(`webhook_events.action = 'document_404_range_fallback'`) and in the API's log.

One run at a time (a single worker thread): a burst of sign-ups queues here rather than running N jobs in the
API process at once. The lane is on for `oura-assets serve` when `DAGSTER_HOME` names an instance (as under
`make dev`, and in a deployment where the API shares the Dagster instance) and `OURA_ASSETS_FIRST_DATA_INLINE`
is not `0`; elsewhere (tests, an API without the instance) first data goes through the sensor.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from oura_assets import ledger
from oura_assets import warehouse as wh
from oura_assets.oura.client import OuraClient, OuraError

log = logging.getLogger("oura_assets.api")

TRIGGER = "first_data"
INLINE_VARIABLE = "OURA_ASSETS_FIRST_DATA_INLINE"
LOOKUP_SLACK = timedelta(days=30)


def _day_of(document: dict[str, Any] | None) -> date | None:
    try:
        return date.fromisoformat(str(document["day"])) if document else None
    except (KeyError, TypeError, ValueError):
        return None


def lane_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether `oura-assets serve` runs first-data syncs itself: an instance is configured, not opted out."""
    env = os.environ if env is None else env
    return bool(env.get("DAGSTER_HOME")) and env.get(INLINE_VARIABLE, "1").strip().lower() not in {
        "0",
        "false",
        "no",
    }


@dataclass(frozen=True)
class FirstDataRun:
    patient_id: str
    sync_id: str
    start: date
    end: date
    trigger: str = TRIGGER
    """`first_data`, or `webhook` for a webhook event's targeted sync (api/webhooks.py)."""
    lookup: tuple[str, str] | None = None
    """(collection, document id) of a webhook event whose document the warehouse does not hold: fetched
    alone first to learn its day, so the run covers that day only (a 404 keeps the days around the event)."""


class FirstDataLane:
    """Executes first-data runs in process, one at a time, on the Dagster instance of `DAGSTER_HOME`."""

    def __init__(
        self, warehouse: wh.Warehouse, client_for: Callable[[str], OuraClient] | None = None
    ) -> None:
        self.warehouse = warehouse
        self.client_for = client_for
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="first-data")
        self._loaded: tuple[Any, Any] | None = None
        self._load_lock = threading.Lock()

    def warm_up(self) -> Future[Any]:
        """Import Dagster and load the definitions and instance now, so the first patient does not wait."""
        return self._pool.submit(self._definitions)

    def submit(self, run: FirstDataRun) -> Future[str | None]:
        return self._pool.submit(self._run, run)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self._loaded is not None:
            self._loaded[1].dispose()

    def _definitions(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._loaded is None:
                import dagster as dg

                from oura_assets.definitions import defs as load_defs
                from oura_assets.defs.jobs import FAST_LANE_JOB_NAME

                self._loaded = (load_defs().resolve_job_def(FAST_LANE_JOB_NAME), dg.DagsterInstance.get())
            return self._loaded

    def _run(self, run: FirstDataRun) -> str | None:
        """Execute the run; if it cannot start, give the request back to the queue. Returns the run id."""
        from oura_assets.defs.partitions import PATIENT_TAG, SYNC_IDS_TAG, TRIGGER_TAG, partition_range_tags

        if run.lookup is not None and self.client_for is not None:
            run = self._locate(run)
        try:
            job, instance = self._definitions()
            result = job.execute_in_process(
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                tags={
                    **partition_range_tags(run.start, run.end),
                    PATIENT_TAG: run.patient_id,
                    SYNC_IDS_TAG: run.sync_id,
                    TRIGGER_TAG: run.trigger,
                },
                raise_on_error=False,
            )
        except Exception as exc:  # the patient still gets their data: through the sensor, later
            log.error(
                "first-data run for patient %s could not run in the API (%s); queued for the sensor instead",
                run.patient_id,
                type(exc).__name__,
                exc_info=True,
            )
            self._release(run)
            return None
        log.info(
            "first-data run %s for patient %s (%s..%s): %s",
            result.run_id,
            run.patient_id,
            run.start,
            run.end,
            "success" if result.success else "failed",
        )
        return result.run_id

    def _locate(self, run: FirstDataRun) -> FirstDataRun:
        """The event's document fetched alone: its day narrows the run; a 404 (Oura announced it before it
        serves it) keeps the days around the event and is recorded on the event; any other failure too."""
        assert run.lookup is not None and self.client_for is not None
        collection, object_id = run.lookup
        try:
            with self.client_for(run.patient_id) as client:
                document = client.document(collection, object_id)
        except (OuraError, ValueError) as exc:
            log.warning(
                "webhook document lookup for patient %s failed (%s)", run.patient_id, type(exc).__name__
            )
            return run
        day = _day_of(document)
        if day is not None and not run.start - LOOKUP_SLACK <= day <= run.end:
            day = None  # a day far from the event's: trust the range we planned
        with self.warehouse.transaction("api: webhook document lookup") as conn:
            narrowed = wh.narrow_to_document_day(conn, run.sync_id, object_id, day)
        if day is None:
            log.warning(
                "Oura answered 404 for %s %s right after its event (patient %s): syncing %s..%s instead",
                collection,
                object_id,
                run.patient_id,
                run.start,
                run.end,
            )
            return run
        return replace(run, start=day, end=day) if narrowed else run

    def _release(self, run: FirstDataRun) -> None:
        try:
            with self.warehouse.transaction("api: release a first-data sync request") as conn:
                ledger.release_request(conn, run.sync_id)
            wh.signal_sync_queued(self.warehouse.path)
        except Exception:
            log.exception("could not give first-data sync %s back to the queue", run.sync_id)
