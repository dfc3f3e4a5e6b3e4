"""The Oura assets: raw documents per collection, then the normalized patient-graph tables.

Every asset covers a range of daily partitions in one run (`BackfillPolicy.single_run()`), so a 30-day
backfill asks Oura for 30 days per patient in a handful of requests rather than 30 runs of one day. A run
serves every patient with an active connection, or only the one named by the run's `oura_assets/patient_id`
tag (API sync requests), or only those of the shard its `oura_assets/shard` tag names (`i/N`: one of N
runs that together cover every patient once; see `shards.py`). One patient's failure is recorded for that
patient and never stops the others.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from oura_assets import rebuild
from oura_assets.config import load_settings
from oura_assets.defs.metadata import table_metadata
from oura_assets.defs.partitions import (
    PATIENT_TAG,
    PATIENTS_FAILED_TAG,
    PATIENTS_OK_TAG,
    PATIENTS_PARTIAL_TAG,
    SYNC_IDS_TAG,
    run_shard,
)
from oura_assets.defs.previews import preview_metadata
from oura_assets.defs.resources import OuraResource, WarehouseResource
from oura_assets.shards import Shard
from oura_assets.sync import RefetchPolicy, claim_patients, sync_patients
from oura_assets.sync_outcome import RunOutcome
from oura_assets.webhook_coverage import review_coverage

RAW_GROUP = "oura_raw"
GRAPH_GROUP = "patient_graph"

# Each raw asset and the Oura collections it lands (`sleep` holds both the daily score and the periods).
RAW_ASSETS: dict[str, tuple[str, ...]] = {
    "daily_readiness": ("daily_readiness",),
    "sleep": ("daily_sleep", "sleep"),
    "daily_activity": ("daily_activity",),
    "workout": ("workout",),
    "session": ("session",),
    "daily_spo2": ("daily_spo2",),
    "daily_stress": ("daily_stress",),
    "daily_resilience": ("daily_resilience",),
    "daily_cardiovascular_age": ("daily_cardiovascular_age",),
    "heartrate": ("heartrate",),
}
RAW_KEYS = {name: dg.AssetKey([RAW_GROUP, name]) for name in RAW_ASSETS}
WEARABLE_DATA_KEY = dg.AssetKey([GRAPH_GROUP, "wearable_data"])
DAILY_STATS_KEY = dg.AssetKey([GRAPH_GROUP, "patient_wearable_daily_stats"])
WORKOUTS_KEY = dg.AssetKey([GRAPH_GROUP, "wearable_workouts"])
SESSIONS_KEY = dg.AssetKey([GRAPH_GROUP, "wearable_sessions"])
WELLNESS_RAW = ("daily_spo2", "daily_stress", "daily_resilience", "daily_cardiovascular_age")

RAW_DESCRIPTIONS = {
    "daily_readiness": "Oura's daily readiness documents exactly as Oura sent them "
    "(`oura_raw.daily_readiness`, one row per patient and document id, the document as JSON). "
    "For analysis prefer `patient_graph.wearable_data` (metric_type `readiness`); "
    "come here for fields we do not normalize.",
    "sleep": "Oura's daily sleep scores (`oura_raw.daily_sleep`) and every sleep period of the night "
    "(`oura_raw.sleep`: main sleep, naps, `rest` and `deleted` periods alike), as Oura sent them. "
    "The normalized tables use only the day's main period; split nights and naps are only here.",
    "daily_activity": "Oura's daily activity documents as Oura sent them (`oura_raw.daily_activity`). Oura's "
    "activity day runs from 4 a.m. to 4 a.m. local time.",
    "workout": "Oura's workout documents as Oura sent them (`oura_raw.workout`, one per workout: activity, "
    "intensity, kcal, metres, local start and end). Needs the patient's `workout` scope; without it the "
    "collection is skipped (see `patient_graph.wearable_collection_status`). Normalized in "
    "`patient_graph.wearable_workouts`.",
    "session": "Oura's session documents as Oura sent them (`oura_raw.session`: breathing, meditation, nap "
    "Moments … with 5-second heart-rate and HRV series). Needs the `session` scope. Normalized in "
    "`patient_graph.wearable_sessions`.",
    "daily_spo2": "Oura's nightly SpO2 summaries (`oura_raw.daily_spo2`: average SpO2 % and breathing "
    "disturbance index). Needs the `spo2Daily` scope, which the connect flow's scope list does not request; "
    "without it the collection is skipped. Its figures are columns of the daily stats.",
    "daily_stress": "Oura's daily stress summaries (`oura_raw.daily_stress`: seconds in the high-stress and "
    "high-recovery zones). Synced in the background and revised with the day's scores.",
    "daily_resilience": "Oura's daily resilience documents (`oura_raw.daily_resilience`: level and its "
    "contributors).",
    "daily_cardiovascular_age": "Oura's daily cardiovascular age predictions "
    "(`oura_raw.daily_cardiovascular_age`: vascular age in years, pulse wave velocity in m/s).",
    "heartrate": "Every heart-rate sample Oura holds for the patients (`oura_raw.heartrate`, one row per "
    "patient, instant and sample source; bpm). Fetched a day "
    "beyond each end of the range so local days are whole.",
}
# Local days need offsets; a day without a daily document borrows the nearest known one within this margin.
#
# The daily stats read the raw daily documents this far either side of their days, and that read is NOT
# declared as `dg.AssetDep(raw, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-31,
# end_offset=31))`: tried with dagster 1.13.27, it breaks the single-run backfills every run here relies on.
# An asset backfill of 4 days over all assets then targets the daily stats over 66 days (every day whose
# window touches the 4), and Dagster will not put them in the raw assets' run ("parent oura_raw/daily_activity
# is requesting a different set of partitions ... cannot be grouped together in the same run"), so a second
# run over 66 days would follow. Without the mapping one run covers all six assets. (`dagster asset
# materialize` of one day, or of today's partition, ran either way.) The margin is a fallback, not the
# data the day is built from: a day's own daily documents give its offset whenever they exist.
OFFSET_SEARCH_MARGIN = timedelta(days=31)


def _day_range(context: dg.AssetExecutionContext) -> tuple[date, date]:
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


def _run_patient(context: dg.AssetExecutionContext) -> str | None:
    return context.run.tags.get(PATIENT_TAG)


def _run_shard(context: dg.AssetExecutionContext) -> Shard | None:
    try:
        return run_shard(context.run.tags)
    except ValueError as exc:
        # A hand-made tag that names no shard: syncing everyone instead would sync the other shards'
        # patients twice tonight, so the run stops before it asks Oura anything.
        raise dg.Failure(description=str(exc)) from None


def _sync_ids(context: dg.AssetExecutionContext) -> list[str]:
    raw = context.run.tags.get(SYNC_IDS_TAG, "")
    return [s for s in raw.split(",") if s]


def _summary_metadata(outcome: RunOutcome, rows: dict[str, int]) -> dict[str, dg.MetadataValue]:
    return {
        "patients": dg.MetadataValue.int(outcome.patients),
        "patients_ok": dg.MetadataValue.int(outcome.patients_ok),
        "patients_failed": dg.MetadataValue.int(outcome.patients_failed),
        "patients_partial": dg.MetadataValue.int(outcome.patients_partial),
        "patients_lost_to_oura": dg.MetadataValue.int(len(outcome.lost_to_oura)),
        "failed_patients": dg.MetadataValue.json(outcome.failed_patients),
        "rows": dg.MetadataValue.json(rows),
        "dagster/row_count": dg.MetadataValue.int(sum(rows.values())),
    }


def _raw_table_metadata(name: str) -> dict[str, object]:
    # An asset's table is the one it is named after. Raw `sleep` also lands `daily_sleep`, listed in `tables`:
    # `oura_raw.sleep` is its primary table because the periods are what the normalizers read most (sleep,
    # hrv, the main period), and both are document tables with the same columns, so its schema fits both.
    primary = f"oura_raw.{name}"
    return table_metadata(primary, *(f"oura_raw.{c}" for c in RAW_ASSETS[name] if f"oura_raw.{c}" != primary))


def build_raw_assets(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            key,
            description=RAW_DESCRIPTIONS[name],
            group_name=RAW_GROUP,
            kinds={"duckdb"},
            metadata=_raw_table_metadata(name),
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
        run_id = context.run.run_id
        began = datetime.now(UTC)
        shard = _run_shard(context)
        patients = claim_patients(
            warehouse,
            run_id=run_id,
            patient_id=_run_patient(context),
            sync_ids=_sync_ids(context),
            shard=shard,
        )
        if shard is not None:
            context.log.info(f"shard {shard}: {len(patients)} of the active patients are this run's")
        with oura.session() as session:
            outcome = sync_patients(
                patients=patients,
                client_for=lambda patient_id: session.client_for(patient_id, warehouse),
                warehouse=warehouse,
                start=start,
                end=end,
                run_id=run_id,
                collections=[c for name in selected for c in RAW_ASSETS[name]],
                max_workers=oura.max_concurrent_patients,
                concurrency=session.budget.suggested_workers,
                purpose=f"dagster run {run_id[:8]}",
                progress=context.log,
                refetch=RefetchPolicy(passes=oura.refetch_passes, cool_down_s=oura.refetch_cool_down_s),
            )
        # The outcome goes on the run itself, where the Runs page shows it.
        context.instance.add_run_tags(
            run_id,
            {
                PATIENTS_OK_TAG: str(outcome.patients_ok),
                PATIENTS_FAILED_TAG: str(outcome.patients_failed),
                PATIENTS_PARTIAL_TAG: str(outcome.patients_partial),
            },
        )
        if outcome.failure:
            # Results and sync events are already recorded; the red run is for us to see.
            raise dg.Failure(description=outcome.failure, metadata=_summary_metadata(outcome, {}))
        coverage: dict[str, Any] = {}
        if _run_patient(context) is None:
            # A pull over everyone (nightly, backfill) audits the webhooks (webhook_coverage.py).
            report = review_coverage(warehouse, load_settings(), began, datetime.now(UTC))
            coverage = {
                k: dg.MetadataValue.json(v) if isinstance(v, dict) else v
                for k, v in report.metadata().items()
            }
        tables = {name: [f"oura_raw.{c}" for c in RAW_ASSETS[name]] for name in selected}
        # Every raw asset's preview in one hold of the warehouse (each `preview_metadata` nests in it), so the
        # file is attached once for all of them rather than once per asset; yielded after it is let go.
        purpose = f"dagster run {run_id[:8]}"
        with warehouse.connect(f"{purpose}: raw previews"):
            previews = {
                name: preview_metadata(warehouse, tables[name], start, end, _run_patient(context), purpose)
                for name in selected
            }
        for name in selected:
            yield dg.MaterializeResult(
                asset_key=RAW_KEYS[name],
                metadata={
                    **_summary_metadata(outcome, outcome.rows(tables[name])),
                    **previews[name],
                    **coverage,
                },
            )

    return oura_raw


def _rebuild(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    table: str,
    write: rebuild.Writer,
    margin: timedelta = timedelta(0),
    day_status: bool = False,
) -> dg.MaterializeResult:
    """Rebuild `table` over the run's days from the raw tables, one patient per short transaction."""
    start, end = _day_range(context)
    run_id = context.run.run_id
    outcome = rebuild.rebuild_per_patient(
        warehouse=warehouse,
        table=table,
        write=write,
        start=start,
        end=end,
        run_id=run_id,
        patient_id=_run_patient(context),
        margin=margin,
        day_status=day_status,
        shard=_run_shard(context),
        purpose=f"dagster run {run_id[:8]}",
        progress=context.log,
    )
    return dg.MaterializeResult(
        metadata={
            "patients": dg.MetadataValue.int(outcome.patients),
            "rows": dg.MetadataValue.json({table: outcome.rows}),
            "dagster/row_count": dg.MetadataValue.int(outcome.rows),
            **preview_metadata(
                warehouse,
                [table, *(["patient_graph.wearable_day_status"] if day_status else [])],
                start,
                end,
                _run_patient(context),
                f"dagster run {run_id[:8]}",
            ),
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
        metadata=table_metadata("patient_graph.wearable_data"),
    )
    def wearable_data(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """The day's Oura metrics per patient: one row per (patient, metric_type, day), figures in `metrics`.

        metric_type is `readiness`, `sleep`, `activity` or `hrv`; `metrics` is JSON with camelCase keys
        (durations in seconds, scores 1-100, HRV in ms, heart rate in bpm; a key is null when Oura gave null).
        A row exists only where Oura returned the documents it is built from, so a day the ring was not worn
        has no row. Sleep and hrv describe the day's main sleep period (the longest `long_sleep`): a nap or
        the second half of a split night is not added in. Rebuilt from the raw tables, without calling Oura.
        For one column per metric, query the analytics snapshot's `daily_wide` view.
        """
        return _rebuild(context, warehouse, "patient_graph.wearable_data", rebuild.write_wearable_data)

    @dg.asset(
        key=DAILY_STATS_KEY,
        deps=[WEARABLE_DATA_KEY, RAW_KEYS["heartrate"], *(RAW_KEYS[name] for name in WELLNESS_RAW)],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GRAPH_GROUP,
        kinds={"duckdb"},
        metadata=table_metadata("patient_graph.patient_wearable_daily_stats"),
    )
    def patient_wearable_daily_stats(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """The day's headline figures side by side: one row per (patient, day) with any data.

        Scores (1-100), total sleep (seconds, main sleep period), steps, calories (kcal), average HRV (ms),
        resting heart rate (bpm, the main period's lowest) and the day's heart-rate min / max / mean / sample
        count (bpm, at full precision), the night's SpO2 average (%) and breathing disturbance index, seconds
        of high stress and high recovery, the resilience level and the vascular age (years). Heart rate
        covers the patient's local calendar day: UTC plus the offset on that day's Oura documents, else the
        nearest known offset, else UTC; a repeated sample counts once. The same step writes
        `patient_graph.wearable_day_status`: every day of the range, complete or why not.
        """
        return _rebuild(
            context,
            warehouse,
            "patient_graph.patient_wearable_daily_stats",
            rebuild.write_daily_stats,
            margin=OFFSET_SEARCH_MARGIN,
            day_status=True,
        )

    @dg.asset(
        key=WORKOUTS_KEY,
        deps=[RAW_KEYS["workout"]],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GRAPH_GROUP,
        kinds={"duckdb"},
        metadata=table_metadata("patient_graph.wearable_workouts"),
    )
    def wearable_workouts(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Every Oura workout: one row per (patient, workout id), several on a day when the patient did more.

        `start_at` / `end_at` in UTC (Oura gives local times), `day` the patient's local day, `activity`
        (walking, running, …), `intensity` (easy, moderate, hard), `calories_kcal`, `distance_m` (null for
        activities without one) and how Oura learned of it (`workout_source`). Rebuilt from
        `oura_raw.workout` without calling Oura.
        """
        return _rebuild(context, warehouse, "patient_graph.wearable_workouts", rebuild.write_workouts)

    @dg.asset(
        key=SESSIONS_KEY,
        deps=[RAW_KEYS["session"]],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GRAPH_GROUP,
        kinds={"duckdb"},
        metadata=table_metadata("patient_graph.wearable_sessions"),
    )
    def wearable_sessions(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Every Oura session (a Moment: breathing, meditation, nap, …): one row per (patient, session id).

        `start_at` / `end_at` in UTC, `session_type`, `mood`, and the heart rate (bpm: mean, min, max) and
        HRV (ms, mean) over the session's non-null 5-second samples. Rebuilt from `oura_raw.session`.
        """
        return _rebuild(context, warehouse, "patient_graph.wearable_sessions", rebuild.write_sessions)

    return [wearable_data, patient_wearable_daily_stats, wearable_workouts, wearable_sessions]
