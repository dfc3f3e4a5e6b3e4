"""The Oura assets: raw documents per collection, then the normalized patient-graph tables.

Every asset covers a range of daily partitions in one run (`BackfillPolicy.single_run()`), so a 30-day
backfill asks Oura for 30 days per patient in a handful of requests rather than 30 runs of one day. A run
serves every patient with an active connection, or only the one named by the run's `oura_assets/patient_id`
tag (API sync requests). One patient's failure is recorded for that patient and never stops the others.
"""

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from oura_assets import normalize
from oura_assets import warehouse as wh
from oura_assets.defs.partitions import PATIENT_TAG, PATIENTS_FAILED_TAG, PATIENTS_OK_TAG, SYNC_IDS_TAG
from oura_assets.defs.resources import OuraResource, WarehouseResource
from oura_assets.sync import RunOutcome, SyncError, claim_patients, heartrate_window, sync_patients

RAW_GROUP = "oura_raw"
GRAPH_GROUP = "patient_graph"

# Each raw asset and the Oura collections it lands (`sleep` holds both the daily score and the periods).
RAW_ASSETS: dict[str, tuple[str, ...]] = {
    "daily_readiness": ("daily_readiness",),
    "sleep": ("daily_sleep", "sleep"),
    "daily_activity": ("daily_activity",),
    "heartrate": ("heartrate",),
}
RAW_KEYS = {name: dg.AssetKey([RAW_GROUP, name]) for name in RAW_ASSETS}
WEARABLE_DATA_KEY = dg.AssetKey([GRAPH_GROUP, "wearable_data"])
DAILY_STATS_KEY = dg.AssetKey([GRAPH_GROUP, "patient_wearable_daily_stats"])

RAW_DESCRIPTIONS = {
    "daily_readiness": "Oura `daily_readiness` documents, one row per document id, as Oura sent them.",
    "sleep": "Oura `daily_sleep` documents and every `sleep` period (main sleep, naps, rest, deleted).",
    "daily_activity": "Oura `daily_activity` documents (a 24-hour day starting at 4 a.m. local time).",
    "heartrate": "Oura heart-rate samples, one row per (timestamp, source), fetched in <= 30-day windows.",
}
# Local days need offsets; a day without a daily document borrows the nearest known one within this margin.
OFFSET_SEARCH_MARGIN = timedelta(days=31)


def _day_range(context: dg.AssetExecutionContext) -> tuple[date, date]:
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


def _run_patient(context: dg.AssetExecutionContext) -> str | None:
    return context.run.tags.get(PATIENT_TAG)


def _sync_ids(context: dg.AssetExecutionContext) -> list[str]:
    raw = context.run.tags.get(SYNC_IDS_TAG, "")
    return [s for s in raw.split(",") if s]


def _progress(context: dg.AssetExecutionContext, n: int, total: int, patient_id: str, msg: str) -> None:
    context.log.info(f"patient {n} of {total} ({patient_id}): {msg}")


def _summary_metadata(outcome: RunOutcome, rows: dict[str, int]) -> dict[str, dg.MetadataValue]:
    return {
        "patients": dg.MetadataValue.int(outcome.patients),
        "patients_ok": dg.MetadataValue.int(outcome.patients_ok),
        "patients_failed": dg.MetadataValue.int(outcome.patients_failed),
        "patients_partial": dg.MetadataValue.int(outcome.patients_partial),
        "failed_patients": dg.MetadataValue.json(outcome.failed_patients),
        "rows": dg.MetadataValue.json(rows),
        "dagster/row_count": dg.MetadataValue.int(sum(rows.values())),
    }


def build_raw_assets(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            key,
            description=RAW_DESCRIPTIONS[name],
            group_name=RAW_GROUP,
            kinds={"duckdb"},
            metadata={"tables": [f"oura_raw.{c}" for c in RAW_ASSETS[name]]},
            skippable=True,
        )
        for name, key in RAW_KEYS.items()
    ]

    @dg.multi_asset(
        name="oura_raw",
        specs=specs,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
    )
    def oura_raw(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, oura: OuraResource
    ) -> Iterator[dg.MaterializeResult]:
        """Fetch the partition range from Oura for each patient and mirror it into `oura_raw.*`."""
        start, end = _day_range(context)
        selected = [name for name, key in RAW_KEYS.items() if key in context.selected_asset_keys]
        store = warehouse.warehouse()
        store.ensure_schema()
        run_id = context.run.run_id
        patients = claim_patients(
            store, run_id=run_id, patient_id=_run_patient(context), sync_ids=_sync_ids(context)
        )
        with oura.session() as session:
            outcome = sync_patients(
                patients=patients,
                client_for=lambda patient_id: session.client_for(patient_id, store),
                warehouse=store,
                start=start,
                end=end,
                run_id=run_id,
                collections=[c for name in selected for c in RAW_ASSETS[name]],
                max_workers=oura.max_concurrent_patients,
                purpose=f"dagster run {run_id[:8]}",
                progress=context.log,
            )
        # The outcome goes on the run itself, where the Runs page shows it.
        context.instance.add_run_tags(
            run_id,
            {PATIENTS_OK_TAG: str(outcome.patients_ok), PATIENTS_FAILED_TAG: str(outcome.patients_failed)},
        )
        if outcome.failure:
            # Results and sync events are already recorded; the red run is for us to see.
            raise dg.Failure(description=outcome.failure, metadata=_summary_metadata(outcome, {}))
        for name in selected:
            rows = outcome.rows(f"oura_raw.{c}" for c in RAW_ASSETS[name])
            yield dg.MaterializeResult(asset_key=RAW_KEYS[name], metadata=_summary_metadata(outcome, rows))

    return oura_raw


def _patients_to_normalize(context: dg.AssetExecutionContext, store: wh.Warehouse, start: date, end: date):
    """The run's patient, or everyone with raw data in the window: normalizing is a pure function of raw."""
    patient = _run_patient(context)
    if patient:
        return [patient]
    with store.connect("list patients with raw data") as conn:
        return wh.patients_with_raw_data(conn, start, end)


def _read_daily_documents(
    conn, patient_id: str, start: date, end: date, margin: timedelta
) -> tuple[dict[str, list[dict]], list[SyncError]]:
    """The patient's raw documents in [start - margin, end + margin], screened: a document the normalizers
    cannot read is left out of the normalized tables (and reported when it falls in [start, end]), but stays
    in the raw table exactly as Oura sent it."""
    documents: dict[str, list[dict]] = {}
    rejected: list[SyncError] = []
    low, high = start.isoformat(), end.isoformat()
    for collection in wh.DOCUMENT_COLLECTIONS:
        documents[collection] = []
        for document in wh.read_raw_documents(conn, collection, patient_id, start - margin, end + margin):
            reason = normalize.validate_document(collection, document)
            if reason is None:
                documents[collection].append(document)
            elif low <= str(document.get("day"))[:10] <= high:
                message = f"document {document.get('id')!r}: {reason}"
                rejected.append(SyncError("invalid_document", message, collection))
    return documents, rejected


def _report_rejected(
    conn, context: dg.AssetExecutionContext, patient_id: str, rejected: list[SyncError]
) -> None:
    if not rejected:
        return
    context.log.warning(f"patient {patient_id}: {len(rejected)} document(s) left out: {rejected[0].message}")
    previous = [r for r in wh.sync_results_for_run(conn, context.run.run_id) if r.patient_id == patient_id]
    if previous:
        wh.record_sync_result(
            conn,
            run_id=context.run.run_id,
            patient_id=patient_id,
            status="partial",
            start_day=previous[0].start_day,
            end_day=previous[0].end_day,
            rows={},
            errors=[e.to_dict() for e in rejected],
        )


def _wearable_rows(patient_id: str, docs: dict[str, list[dict]]) -> list[normalize.WearableRow]:
    return normalize.wearable_rows(
        patient_id, docs["daily_readiness"], docs["daily_sleep"], docs["sleep"], docs["daily_activity"]
    )


def _in_window(docs: dict[str, list[dict]], start: date, end: date) -> dict[str, list[dict]]:
    """The documents whose `day` lies in [start, end] (stored documents always carry an ISO `day`)."""
    low, high = start.isoformat(), end.isoformat()
    return {c: [d for d in found if low <= str(d.get("day"))[:10] <= high] for c, found in docs.items()}


def _write_wearable_data(conn, patient_id: str, start: date, end: date, nearby: dict[str, list[dict]]) -> int:
    rows = _wearable_rows(patient_id, _in_window(nearby, start, end))
    return wh.replace_wearable_data(conn, patient_id, start, end, rows, datetime.now(UTC))


def _write_daily_stats(conn, patient_id: str, start: date, end: date, nearby: dict[str, list[dict]]) -> int:
    # Offsets come from the wider span: a day without its own daily document borrows the nearest one.
    offsets = normalize.day_offsets(
        nearby["daily_readiness"], nearby["daily_sleep"], nearby["daily_activity"]
    )
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    samples = wh.read_raw_heartrate(conn, patient_id, *heartrate_window(start, end))
    hr_stats = normalize.heart_rate_day_stats(samples, offsets, days)
    wearable = _wearable_rows(patient_id, _in_window(nearby, start, end))
    rows = normalize.daily_stats_rows(patient_id, wearable, hr_stats, offsets)
    return wh.replace_daily_stats(conn, patient_id, start, end, rows, datetime.now(UTC))


def _rebuild_per_patient(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    table: str,
    write: Callable[..., int],
    margin: timedelta = timedelta(0),
) -> dg.MaterializeResult:
    """Rebuild `table` over the run's days from the raw tables, one patient per short transaction.

    Each patient's daily documents are read once, over the run's days widened by `margin`; `write` gets them
    all and picks the run's days itself.
    """
    start, end = _day_range(context)
    store = warehouse.warehouse()
    patients = _patients_to_normalize(context, store, start, end)
    total = 0
    for n, patient_id in enumerate(patients, start=1):
        with store.transaction(f"dagster run {context.run.run_id[:8]}: write {table}") as conn:
            nearby, rejected = _read_daily_documents(conn, patient_id, start, end, margin)
            _report_rejected(conn, context, patient_id, rejected)
            written = write(conn, patient_id, start, end, nearby)
            wh.add_sync_result_rows(
                conn, run_id=context.run.run_id, patient_id=patient_id, rows={table: written}
            )
        total += written
        if len(patients) > 20 and n % 20 == 0:
            _progress(context, n, len(patients), patient_id, f"{written} rows")
    return dg.MaterializeResult(
        metadata={
            "patients": dg.MetadataValue.int(len(patients)),
            "rows": dg.MetadataValue.json({table: total}),
            "dagster/row_count": dg.MetadataValue.int(total),
        }
    )


def build_graph_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=WEARABLE_DATA_KEY,
        deps=[RAW_KEYS["daily_readiness"], RAW_KEYS["sleep"], RAW_KEYS["daily_activity"]],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GRAPH_GROUP,
        kinds={"duckdb"},
    )
    def wearable_data(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """One row per (patient, metric_type, day): readiness, sleep, activity and hrv, camelCase keys.

        Built from the raw tables, so re-materializing re-derives it without calling Oura. A row exists only
        where Oura returned the documents it is built from; sleep and hrv use the day's main sleep period.
        """
        return _rebuild_per_patient(context, warehouse, "patient_graph.wearable_data", _write_wearable_data)

    @dg.asset(
        key=DAILY_STATS_KEY,
        deps=[WEARABLE_DATA_KEY, RAW_KEYS["heartrate"]],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GRAPH_GROUP,
        kinds={"duckdb"},
    )
    def patient_wearable_daily_stats(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """One row per (patient, day) with any data: the day's scores, sleep, steps, HRV and heart rate.

        Heart-rate figures cover the patient's local calendar day (UTC plus the offset on that day's daily
        documents, else the nearest known offset, else UTC); a sample repeated by Oura counts once.
        """
        return _rebuild_per_patient(
            context,
            warehouse,
            "patient_graph.patient_wearable_daily_stats",
            _write_daily_stats,
            margin=OFFSET_SEARCH_MARGIN,
        )

    return [wearable_data, patient_wearable_daily_stats]
