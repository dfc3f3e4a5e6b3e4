"""Sensors: API sync requests become runs; finished runs become `wearable_sync` events.

Both read and write the warehouse briefly and idempotently (run keys, deterministic event ids), so a sensor
tick that is retried, or a run that is seen twice, never duplicates a run or an event.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from oura_assets import warehouse as wh
from oura_assets.defs.assets import RAW_KEYS
from oura_assets.defs.jobs import SYNC_JOB_NAME
from oura_assets.defs.partitions import PATIENT_TAG, SYNC_IDS_TAG, TRIGGER_TAG, partition_range_tags
from oura_assets.defs.resources import WarehouseResource

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
# Finished runs are re-read from a little before the cursor: events are idempotent, a missed run is not.
CURSOR_OVERLAP = timedelta(seconds=5)


def _is_sync_run(run: dg.DagsterRun) -> bool:
    if run.job_name == SYNC_JOB_NAME:
        return True
    return bool(run.asset_selection and set(run.asset_selection) & set(RAW_KEYS.values()))


def _run_range(run: dg.DagsterRun) -> tuple[str | None, str | None]:
    tags = run.tags
    start = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
    end = tags.get("dagster/asset_partition_range_end") or tags.get("dagster/partition")
    return start, end


def record_run_outcome(store: wh.Warehouse, run: dg.DagsterRun) -> int:
    """Write one `wearable_sync` event per patient of a finished sync run and close its sync requests.

    Returns the number of events written (0 for runs that synced nobody). Safe to call again for the same run.
    """
    succeeded = run.status == dg.DagsterRunStatus.SUCCESS
    sync_ids = [s for s in run.tags.get(SYNC_IDS_TAG, "").split(",") if s]
    with store.transaction(f"sensor: record outcome of run {run.run_id[:8]}") as conn:
        results = wh.sync_results_for_run(conn, run.run_id)
        outcomes: dict[str, dict[str, Any]] = {}
        for result in results:
            status, errors = result.status, list(result.errors)
            if not succeeded and status == "success":
                # Raw data landed but a later step (normalization) did not: the patient's data is partial.
                status = "partial"
                errors.append({"code": "run_failed", "message": f"run ended {run.status.value}"})
            outcomes[result.patient_id] = {
                "status": status,
                "startDay": result.start_day.isoformat(),
                "endDay": result.end_day.isoformat(),
                "rows": result.rows,
                "errors": errors,
                "documents": result.documents,
            }
        if not results and not succeeded:
            # The run died before it reached a patient: each patient it was meant for gets a failed sync.
            start, end = _run_range(run)
            patient = run.tags.get(PATIENT_TAG)
            targets = [c.patient_id for c in wh.list_active_connections(conn, patient)]
            for patient_id in targets:
                outcomes[patient_id] = {
                    "status": "failed",
                    "startDay": start,
                    "endDay": end,
                    "rows": {},
                    "errors": [{"code": "run_failed", "message": f"run ended {run.status.value}"}],
                }
        for patient_id, outcome in outcomes.items():
            wh.record_event(
                conn,
                patient_id=patient_id,
                event_type="wearable_sync",
                event_id=f"wearable_sync:{run.run_id}:{patient_id}",
                payload={"runId": run.run_id, **outcome},
            )
        for sync_id in sync_ids:
            request = wh.get_sync_request(conn, sync_id)
            if request is None:
                continue
            outcome = outcomes.get(request.patient_id)
            final = outcome["status"] if outcome else ("success" if succeeded else "failed")
            wh.mark_sync_request(conn, sync_id, final, run_id=run.run_id, result=outcome)
    return len(outcomes)


def build_event_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="wearable_sync_events",
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a `wearable_sync` event per patient for every finished Oura sync run.",
    )
    def wearable_sync_events(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource
    ) -> dg.SkipReason | None:
        after = (
            datetime.fromtimestamp(float(context.cursor), UTC) - CURSOR_OVERLAP if context.cursor else None
        )
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(statuses=FINISHED, updated_after=after),
            order_by="update_timestamp",
            ascending=True,
            limit=100,
        )
        store = warehouse.warehouse()
        store.ensure_schema()
        written = runs = 0
        newest = float(context.cursor) if context.cursor else 0.0
        for record in records:
            if _is_sync_run(record.dagster_run):
                written += record_run_outcome(store, record.dagster_run)
                runs += 1
            newest = max(newest, record.update_timestamp.timestamp())
        context.update_cursor(str(newest))
        if not written:
            return dg.SkipReason("no finished sync runs to record")
        context.log.info(f"recorded the outcome of {runs} sync run(s): {written} wearable_sync event(s)")
        return None

    return wearable_sync_events


def build_sync_request_sensor(job: UnresolvedAssetJobDefinition, first_day: date) -> dg.SensorDefinition:
    @dg.sensor(
        name="oura_sync_requests",
        job=job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Turns sync requests queued by the connection API into one run per request.",
    )
    def oura_sync_requests(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource
    ) -> Iterator[dg.RunRequest | dg.SkipReason]:
        store = warehouse.warehouse()
        store.ensure_schema()
        with store.connect("sensor: read queued sync requests") as conn:
            queued = wh.queued_sync_requests(conn, limit=50)
        if not queued:
            yield dg.SkipReason("no queued sync requests")
            return
        last_day = datetime.now(UTC).date()
        for request in queued:
            start, end = max(request.start_day, first_day), min(request.end_day, last_day)
            if end < start:
                with store.transaction("sensor: reject an empty sync request") as conn:
                    wh.mark_sync_request(
                        conn, request.sync_id, "failed", result={"errors": [{"code": "empty_range"}]}
                    )
                continue
            yield dg.RunRequest(
                run_key=request.sync_id,
                tags={
                    **partition_range_tags(start, end),
                    PATIENT_TAG: request.patient_id,
                    SYNC_IDS_TAG: request.sync_id,
                    TRIGGER_TAG: "api",
                },
            )

    return oura_sync_requests
