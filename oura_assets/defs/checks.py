"""Asset checks: the guarantees data scientists rely on, and the patients who need someone to act.

Patient-side problems (a reconnect needed, an expired membership) are not run failures; they show here, as a
warning on `wearable_data`, every night until they are resolved.
"""

from collections.abc import Iterator

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.defs.assets import DAILY_STATS_KEY, RAW_ASSETS, RAW_KEYS, WEARABLE_DATA_KEY
from oura_assets.defs.resources import WarehouseResource
from oura_assets.normalize import METRIC_KEYS
from oura_assets.sync import OURA_UNAVAILABLE_CODES


@dg.asset_check(asset=WEARABLE_DATA_KEY, description="Every row's metrics carry exactly the documented keys.")
def wearable_data_metric_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect("check: wearable_data metric keys") as conn:
        shapes = wh.wearable_data_key_shapes(conn)
    wrong = {
        f"{metric_type}: {sorted(keys)}": count
        for metric_type, keys, count in shapes
        if sorted(keys) != sorted(METRIC_KEYS.get(metric_type, ()))
    }
    return dg.AssetCheckResult(
        passed=not wrong,
        metadata={"row_shapes_checked": len(shapes), "unexpected_shapes": dg.MetadataValue.json(wrong)},
    )


@dg.asset_check(
    asset=WEARABLE_DATA_KEY,
    description="Patients whose Oura connection needs them to act: reconnect, or renew their membership.",
)
def connections_need_attention(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect("check: connections") as conn:
        rows = wh.connections_needing_attention(conn)
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "patients": len(rows),
            "details": dg.MetadataValue.json({p: {"status": s, "last_error": e} for p, s, e in rows[:200]}),
        },
    )


@dg.asset_check(
    asset=DAILY_STATS_KEY, description="Daily stats agree with wearable_data and cover the same patient-days."
)
def daily_stats_agree_with_wearable_data(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect("check: daily stats agreement") as conn:
        mismatched = wh.daily_stats_mismatched_days(conn)
    return dg.AssetCheckResult(passed=mismatched == 0, metadata={"mismatched_days": mismatched})


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "oura_available",
            asset=key,
            description=(
                f"In the run's sync, Oura served every patient's {', '.join(RAW_ASSETS[name])}: none was "
                "lost to 5xx, dropped connections or 429s that outlasted every retry and refetch pass."
            ),
        )
        for name, key in RAW_KEYS.items()
    ],
    can_subset=True,
)
def oura_available(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.AssetCheckResult]:
    """A partial Oura outage: the run stays green (most patients landed), so this check is where it shows.

    Severity ERROR, not WARN: WARN is for what a patient must fix and what the nightly run cannot (see
    `connections_need_attention`). Here nobody's patient can act, the data of this run's days is missing for
    the patients listed, and a later run only brings it back if those days fall inside its lookback window;
    an outage during a backfill must be re-run by someone. Not blocking: the normalized tables still rebuild
    from what landed, keeping earlier data for the collections that failed.
    """
    with warehouse.get_connection("check: Oura availability in the run") as conn:
        found = wh.sync_errors_in_run(conn, context.run.run_id, OURA_UNAVAILABLE_CODES)
    for check_key in context.selected_asset_check_keys:
        name = check_key.asset_key.path[-1]
        lost = [e for e in found.errors if e.collection is None or e.collection in RAW_ASSETS[name]]
        details = {
            e.patient_id: {
                "status": e.status,
                "collection": e.collection,
                "code": e.code,
                "message": e.message,
            }
            for e in lost[:200]
        }
        yield dg.AssetCheckResult(
            asset_key=check_key.asset_key,
            check_name=check_key.name,
            passed=not lost,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "run_id": found.run_id or "",
                "patients_in_run": found.patients,
                "patients_lost_to_oura": len({e.patient_id for e in lost}),
                "details": dg.MetadataValue.json(details),
            },
        )
