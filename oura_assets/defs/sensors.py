"""Sensors: API sync requests become runs; finished runs become `wearable_sync` events.

Both read and write the warehouse briefly and idempotently (run keys; the ledger records a finished run
once), so a sensor tick that is retried, or a run that is seen twice, never duplicates a run or an event,
and never rewrites a sync request that is closed.
"""

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from oura_assets import ledger
from oura_assets import warehouse as wh
from oura_assets.config import SYNC_EVENTS_INTERVAL_S
from oura_assets.defs.assets import RAW_KEYS
from oura_assets.defs.jobs import FAST_LANE_JOB_NAME, SYNC_JOB_NAME
from oura_assets.defs.partitions import (
    PATIENT_TAG,
    SYNC_IDS_TAG,
    TRIGGER_TAG,
    partition_range_tags,
    run_range,
    run_shard,
)
from oura_assets.defs.resources import WarehouseResource

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
# Finished runs are re-read from a little before the cursor (see EventCursor): a missed run is lost.
CURSOR_OVERLAP = timedelta(seconds=5)


def _is_sync_run(run: dg.DagsterRun) -> bool:
    if run.job_name in (SYNC_JOB_NAME, FAST_LANE_JOB_NAME):
        return True
    return bool(run.asset_selection and set(run.asset_selection) & set(RAW_KEYS.values()))


def finished_run(run: dg.DagsterRun) -> ledger.FinishedRun:
    """The ledger's view of a finished Dagster run: how it ended, its sync requests, its patient, shard and
    days."""
    start, end = run_range(run.tags)
    try:
        shard, malformed = run_shard(run.tags), False
    except ValueError:
        # The raw asset refuses such a run before it claims anyone (see assets._run_shard): it was nobody's.
        shard, malformed = None, True
    return ledger.FinishedRun(
        run_id=run.run_id,
        succeeded=run.status == dg.DagsterRunStatus.SUCCESS,
        ended=run.status.value,
        sync_ids=tuple(s for s in run.tags.get(SYNC_IDS_TAG, "").split(",") if s),
        patient_id=run.tags.get(PATIENT_TAG),
        start_day=start,
        end_day=end,
        shard=shard,
        meant_for_nobody=malformed,
    )


def record_run_outcome(store: wh.WarehouseAccess, run: dg.DagsterRun) -> int | None:
    """Write one `wearable_sync` event per patient of a finished sync run and close its sync requests.

    Returns the number of events written (0 for runs that synced nobody), or None when the ledger had
    recorded the run before (then nothing is written).
    """
    outcome = None
    for attempt in store.attempts(f"sensor: record outcome of run {run.run_id[:8]}"):
        with attempt as conn:
            outcome = ledger.record_run_outcome(conn, finished_run(run))
    return outcome  # after the loop: a try that lost a DuckLake conflict at COMMIT runs again


@dataclass(frozen=True)
class EventCursor:
    """Where `wearable_sync_events` is: the newest finished run it handled, and the runs it handled within
    `CURSOR_OVERLAP` of it.

    Finished runs are re-read from a little before the newest one (update timestamps of runs finishing at
    about the same time need not arrive in order: a missed run is lost, a re-read one is not). The runs
    handled in that overlap are kept so that a tick with nothing new skips them without opening the
    warehouse. Cursors of older releases (the newest timestamp alone) are read as having handled nothing.
    """

    newest: float = 0.0
    handled: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> "EventCursor":
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            return cls()
        if isinstance(data, int | float):
            return cls(newest=float(data))
        return cls(newest=float(data.get("newest", 0.0)), handled=frozenset(data.get("handled", ())))

    def serialize(self) -> str:
        return json.dumps({"newest": self.newest, "handled": sorted(self.handled)})

    def updated_after(self) -> datetime | None:
        return datetime.fromtimestamp(self.newest, UTC) - CURSOR_OVERLAP if self.newest else None

    def after(self, records: Sequence[dg.RunRecord]) -> "EventCursor":
        """The cursor once `records` (everything the run query returned) are handled."""
        newest = max([self.newest, *(r.update_timestamp.timestamp() for r in records)])
        low = newest - CURSOR_OVERLAP.total_seconds()
        return EventCursor(
            newest=newest,
            handled=frozenset(r.dagster_run.run_id for r in records if r.update_timestamp.timestamp() >= low),
        )


def build_event_sensor(interval_s: int = SYNC_EVENTS_INTERVAL_S) -> dg.SensorDefinition:
    """The sensor recording finished runs, every `interval_s` (`OURA_ASSETS_SYNC_EVENTS_INTERVAL_S`)."""

    @dg.sensor(
        name="wearable_sync_events",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a `wearable_sync` event per patient for every finished Oura sync run.",
    )
    def wearable_sync_events(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource
    ) -> dg.SkipReason | None:
        cursor = EventCursor.parse(context.cursor)
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(statuses=FINISHED, updated_after=cursor.updated_after()),
            order_by="update_timestamp",
            ascending=True,
            limit=100,
        )
        fresh = [
            r.dagster_run
            for r in records
            if r.dagster_run.run_id not in cursor.handled and _is_sync_run(r.dagster_run)
        ]
        # Nothing new: the warehouse is not opened at all (every connection takes its writer lock).
        written = runs = 0
        for run in fresh:
            events = record_run_outcome(warehouse, run)
            if events is not None:
                written += events
                runs += 1
        context.update_cursor(cursor.after(records).serialize())
        if not written:
            return dg.SkipReason("no finished sync runs to record")
        context.log.info(f"recorded the outcome of {runs} sync run(s): {written} wearable_sync event(s)")
        return None

    return wearable_sync_events


SYNC_QUEUE_FULL_CHECK = timedelta(seconds=60)
"""How often `oura_sync_requests` reads the queue although the queue signal did not move (a request queued by
a process that could not touch the signal, or by hand)."""
SHORT_SYNC_DAYS = 7
PRIORITY_TAG = "dagster/priority"


@dataclass(frozen=True)
class QueueCursor:
    """The queue signal's stamp the sensor last acted on, and when it last read the queue."""

    stamp: int = 0
    checked: float = 0.0

    @classmethod
    def parse(cls, text: str | None) -> "QueueCursor":
        try:
            data = json.loads(text or "{}")
            return cls(stamp=int(data.get("stamp", 0)), checked=float(data.get("checked", 0.0)))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def serialize(self) -> str:
        return json.dumps({"stamp": self.stamp, "checked": self.checked})

    def due(self, stamp: int, now: float) -> bool:
        """Whether the queue must be read: the signal moved, or the periodic check is due."""
        return stamp != self.stamp or now - self.checked >= SYNC_QUEUE_FULL_CHECK.total_seconds()


def build_sync_request_sensor(first_day: date) -> dg.SensorDefinition:
    # The daemon evaluates sensors at most every 5 s whatever the interval (dagster's sensor loop), so 1 s
    # means "every loop": a queued request waits 2.5 s on average for its run. A tick whose queue signal did
    # not move never opens the warehouse (see warehouse/queue_signal.py).
    @dg.sensor(
        name="oura_sync_requests",
        job_name=SYNC_JOB_NAME,
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Turns sync requests queued by the connection API and webhooks into one run per request.",
    )
    def oura_sync_requests(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource
    ) -> Iterator[dg.RunRequest | dg.SkipReason]:
        cursor = QueueCursor.parse(context.cursor)
        now = time.time()
        # The stamp is read before the queue: a request queued after this read moves it again.
        stamp = wh.sync_queue_stamp(warehouse.database)
        if not cursor.due(stamp, now):
            yield dg.SkipReason("the sync queue signal did not move")
            return
        with warehouse.connect("sensor: read queued sync requests") as conn:
            queued = wh.queued_sync_requests(conn, limit=50)
        context.update_cursor(QueueCursor(stamp=stamp, checked=now).serialize())
        if not queued:
            yield dg.SkipReason("no queued sync requests")
            return
        last_day = datetime.now(UTC).date()
        for request in queued:
            start, end = max(request.start_day, first_day), min(request.end_day, last_day)
            if end < start:
                for attempt in warehouse.attempts("sensor: reject an empty sync request"):
                    with attempt as conn:
                        ledger.reject_request(conn, request.sync_id, code="empty_range")
                continue
            # A short range (a new patient's first data, a webhook's day) goes before long ones in the run
            # queue; the queue runs one run per patient at a time (dagster.yaml), oldest first.
            short = (end - start).days + 1 <= SHORT_SYNC_DAYS
            yield dg.RunRequest(
                run_key=request.sync_id,
                tags={
                    **partition_range_tags(start, end),
                    PATIENT_TAG: request.patient_id,
                    SYNC_IDS_TAG: request.sync_id,
                    TRIGGER_TAG: "api",
                    PRIORITY_TAG: "1" if short else "0",
                },
            )

    return oura_sync_requests
