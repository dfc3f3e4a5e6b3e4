"""Asset checks: the guarantees data scientists rely on, and the patients who need someone to act.

Patient-side problems (a reconnect needed, an expired membership) are not run failures; they show here, as a
warning on `wearable_data`, every night until they are resolved.
"""

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.defs.assets import DAILY_STATS_KEY, WEARABLE_DATA_KEY
from oura_assets.defs.resources import WarehouseResource
from oura_assets.normalize import METRIC_KEYS


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
