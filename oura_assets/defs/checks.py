"""Asset checks: the guarantees data scientists rely on, and the patients who need someone to act.

Patient-side problems (a reconnect needed, an expired membership) are not run failures; they show here, as a
warning on `wearable_data`, every night until they are resolved.

Each check is a plain function of the warehouse (tests and `dagster asset check` call them on their own);
`CHECK_STEPS` runs each asset's checks in one Dagster step (`check_steps.py` says why: 60-90 ms of Dagster's
own work per step).
"""

from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg

from oura_assets import warehouse as wh
from oura_assets.clock import utc_now
from oura_assets.defs.assets import (
    DAILY_STATS_KEY,
    RAW_ASSETS,
    RAW_KEYS,
    SESSIONS_KEY,
    WEARABLE_DATA_KEY,
    WORKOUTS_KEY,
)
from oura_assets.defs.check_steps import CheckFn, CheckSet
from oura_assets.defs.partitions import run_range
from oura_assets.defs.resources import WarehouseResource
from oura_assets.defs.webhooks import WEBHOOKS_ANNOUNCED_CHANGES, webhooks_announced_changes
from oura_assets.normalize import METRIC_KEYS
from oura_assets.sync import heartrate_window
from oura_assets.sync_errors import OURA_UNAVAILABLE_CODES

_checks = CheckSet()


def _run_window() -> wh.RunWindow | None:
    """The rows the running check's run wrote: its partition range, and the heart-rate window its sync
    fetched and its daily-stats rebuild reads back (`sync.heartrate_window`). None outside a run over
    partitions (a check called on its own): the check then sweeps the whole table.

    Scoping the data checks to the run keeps the nightly run's cost proportional to its days, not to the
    history behind them (issue 10). What the raw checks guard still holds: the normalized assets rebuild
    exactly these days from exactly these rows, so a bad row the run could build on is always looked at,
    and a bad row elsewhere is looked at by the run that covers its day. The context comes from Dagster's
    current-context variable rather than a `context` argument, so the checks stay callable as plain
    functions (tests, `dagster asset check`) with the whole-table meaning.
    """
    try:
        context = dg.AssetCheckExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None
    first, last = run_range(context.run.tags)
    if not first or not last:
        return None
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return wh.RunWindow(start, end, *heartrate_window(start, end))


def _scope(window: wh.RunWindow | None) -> dict[str, dg.MetadataValue]:
    if window is None:
        return {"checked": dg.MetadataValue.text("the whole table")}
    return {"checked": dg.MetadataValue.text(f"the run's days {window.start}..{window.end}")}


@_checks.check(WEARABLE_DATA_KEY, description="Every row's metrics carry exactly the documented keys.")
def wearable_data_metric_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: wearable_data metric keys") as conn:
        shapes = wh.wearable_data_key_shapes(conn, window)
    wrong = {
        f"{metric_type}: {sorted(keys)}": count
        for metric_type, keys, count in shapes
        if sorted(keys) != sorted(METRIC_KEYS.get(metric_type, ()))
    }
    return dg.AssetCheckResult(
        passed=not wrong,
        metadata={
            "row_shapes_checked": len(shapes),
            "unexpected_shapes": dg.MetadataValue.json(wrong),
            **_scope(window),
        },
    )


@_checks.check(
    WEARABLE_DATA_KEY,
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


@_checks.check(
    DAILY_STATS_KEY, description="Daily stats agree with wearable_data and cover the same patient-days."
)
def daily_stats_agree_with_wearable_data(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: daily stats agreement") as conn:
        mismatched = wh.daily_stats_mismatched_days(conn, window)
    return dg.AssetCheckResult(
        passed=mismatched == 0, metadata={"mismatched_days": mismatched, **_scope(window)}
    )


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
    with warehouse.connect("check: Oura availability in the run") as conn:
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


# Data-quality checks (issue 8.5): each names the rows at fault (patient, day, id, value; the first
# `wh.MAX_OFFENDERS`). Checks on the raw tables block: a failure there stops the run before the normalized
# tables are rebuilt from bad documents. Checks on the normalized tables warn: their rows are already written,
# and a red run would not unwrite them.

DAY_DUE_HOUR_UTC = 6  # yesterday's rings have synced, and the 03:00 run has landed them, by 06:00 UTC


def _offenders_result(
    found: wh.Offenders,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    **extra: dg.MetadataValue,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=found.count == 0,
        severity=severity,
        metadata={
            "offending_rows": dg.MetadataValue.int(found.count),
            "offenders": dg.MetadataValue.json([row.to_dict() for row in found.rows]),
            **extra,
        },
    )


def _combined(parts: list[wh.Offenders]) -> wh.Offenders:
    rows = [row for part in parts for row in part.rows]
    return wh.Offenders(sum(part.count for part in parts), rows[: wh.MAX_OFFENDERS])


def _raw_unique_keys(asset: str) -> CheckFn:
    tables = [f"oura_raw.{collection}" for collection in RAW_ASSETS[asset]]

    @_checks.check(
        RAW_KEYS[asset],
        name="unique_keys",
        blocking=True,
        description=f"No two rows of {', '.join(tables)} share a key (patient and document id, or patient, "
        "timestamp and source for heart rate). Blocks the run: a duplicate would count twice downstream.",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        window = _run_window()
        with warehouse.connect(f"check: unique keys of {asset}") as conn:
            return _unique_keys_result(conn, tables, window, dg.AssetCheckSeverity.ERROR)

    return _check


def _unique_keys_result(
    conn: object, tables: list[str], window: wh.RunWindow | None, severity: dg.AssetCheckSeverity
) -> dg.AssetCheckResult:
    """In a run, a table the database holds to its primary key cannot hold a duplicate: no scan (the insert
    that would have made one failed). Otherwise (a DuckLake catalog, `oura_raw.heartrate`, which has no key
    index in a DuckDB file either, a table rebuilt without its key) the keys of the run's rows are looked
    at; called on its own, the whole table."""
    enforced = [t for t in tables if window is not None and wh.primary_key_enforced(conn, t)]
    found = _combined([wh.duplicate_keys(conn, t, window) for t in tables if t not in enforced])
    return _offenders_result(
        found, severity, enforced_by_primary_key=dg.MetadataValue.json(enforced), **_scope(window)
    )


def _raw_scores(asset: str, collection: str) -> CheckFn:
    @_checks.check(
        RAW_KEYS[asset],
        name="scores_in_range",
        blocking=True,
        description=f"Every `{collection}` score is 1-100 or null. Blocks the run: wearable_data and the "
        "daily stats copy the score as it is.",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        window = _run_window()
        with warehouse.connect(f"check: {collection} scores") as conn:
            return _offenders_result(wh.raw_scores_out_of_range(conn, collection, window), **_scope(window))

    return _check


raw_daily_readiness_unique_keys = _raw_unique_keys("daily_readiness")
raw_sleep_unique_keys = _raw_unique_keys("sleep")
raw_daily_activity_unique_keys = _raw_unique_keys("daily_activity")
raw_heartrate_unique_keys = _raw_unique_keys("heartrate")
raw_workout_unique_keys = _raw_unique_keys("workout")
raw_session_unique_keys = _raw_unique_keys("session")
raw_daily_spo2_unique_keys = _raw_unique_keys("daily_spo2")
raw_daily_stress_unique_keys = _raw_unique_keys("daily_stress")
raw_daily_resilience_unique_keys = _raw_unique_keys("daily_resilience")
raw_daily_cardiovascular_age_unique_keys = _raw_unique_keys("daily_cardiovascular_age")


def _spans_in_order(key: dg.AssetKey, table: str) -> CheckFn:
    @_checks.check(
        key,
        name="spans_in_order",
        description=f"Every `{table}` row ends after it starts, lasts at most a day, and its `day` is "
        "within a day of its UTC start (a wrong offset would move it).",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        window = _run_window()
        with warehouse.connect(f"check: spans of {table}") as conn:
            return _offenders_result(
                wh.spans_out_of_order(conn, table, window), dg.AssetCheckSeverity.WARN, **_scope(window)
            )

    return _check


workouts_spans_in_order = _spans_in_order(WORKOUTS_KEY, "patient_graph.wearable_workouts")
sessions_spans_in_order = _spans_in_order(SESSIONS_KEY, "patient_graph.wearable_sessions")
raw_daily_readiness_scores = _raw_scores("daily_readiness", "daily_readiness")
raw_daily_sleep_scores = _raw_scores("sleep", "daily_sleep")
raw_daily_activity_scores = _raw_scores("daily_activity", "daily_activity")


@_checks.check(
    RAW_KEYS["heartrate"],
    name="bpm_in_range",
    blocking=True,
    description="Every heart-rate sample is 25-250 bpm. Blocks the run: one impossible sample would become "
    "a day's hr_min or hr_max.",
)
def raw_heartrate_bpm_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: heart-rate bpm") as conn:
        return _offenders_result(wh.raw_heartrate_out_of_range(conn, window), **_scope(window))


@_checks.check(
    RAW_KEYS["sleep"],
    name="sleep_periods_consistent",
    blocking=True,
    description=f"Every sleep period has durations >= 0, deep + REM + light <= total sleep + "
    f"{wh.SLEEP_SUM_TOLERANCE_S} s (Oura's total is the sum of the three; the tolerance covers rounding), "
    "and bedtime_end after bedtime_start (a night still in progress has no end yet). Blocks the run: the "
    "main sleep period feeds wearable_data's sleep and hrv rows.",
)
def raw_sleep_periods_consistent(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: sleep periods") as conn:
        return _offenders_result(
            wh.raw_sleep_period_problems(conn, window),
            tolerance_s=dg.MetadataValue.int(wh.SLEEP_SUM_TOLERANCE_S),
            **_scope(window),
        )


_WARN = dg.AssetCheckSeverity.WARN


@_checks.check(
    WEARABLE_DATA_KEY, description="One row per (patient, source, metric type, day): no duplicate keys."
)
def wearable_data_unique_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: wearable_data keys") as conn:
        return _unique_keys_result(conn, ["patient_graph.wearable_data"], window, _WARN)


@_checks.check(DAILY_STATS_KEY, description="One row per (patient, source, day): no duplicate keys.")
def daily_stats_unique_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: daily stats keys") as conn:
        return _unique_keys_result(conn, ["patient_graph.patient_wearable_daily_stats"], window, _WARN)


@_checks.check(
    WEARABLE_DATA_KEY,
    description="Readiness, sleep and activity scores in `metrics` are 1-100 or null.",
)
def wearable_data_scores_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: wearable_data scores") as conn:
        return _offenders_result(wh.wearable_data_scores_out_of_range(conn, window), _WARN, **_scope(window))


@_checks.check(DAILY_STATS_KEY, description="Readiness, sleep and activity scores are 1-100 or null.")
def daily_stats_scores_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: daily stats scores") as conn:
        return _offenders_result(wh.daily_stats_scores_out_of_range(conn, window), _WARN, **_scope(window))


@_checks.check(DAILY_STATS_KEY, description="hr_min and hr_max are 25-250 bpm (or null).")
def daily_stats_bpm_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: daily stats bpm") as conn:
        return _offenders_result(wh.daily_stats_heartrate_out_of_range(conn, window), _WARN, **_scope(window))


@_checks.check(
    WEARABLE_DATA_KEY,
    description="Sleep durations are >= 0 and deep + REM + light <= totalSleep + "
    f"{wh.SLEEP_SUM_TOLERANCE_S} s (Oura's total is the sum of the three; the tolerance covers rounding).",
)
def wearable_data_sleep_durations(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: wearable_data sleep durations") as conn:
        return _offenders_result(
            wh.wearable_data_sleep_duration_problems(conn, window),
            _WARN,
            tolerance_s=dg.MetadataValue.int(wh.SLEEP_SUM_TOLERANCE_S),
            **_scope(window),
        )


@_checks.check(WEARABLE_DATA_KEY, description="Every sleep row's bedtimeEnd is after its bedtimeStart.")
def wearable_data_bedtimes_ordered(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    window = _run_window()
    with warehouse.connect("check: wearable_data bedtimes") as conn:
        return _offenders_result(
            wh.wearable_data_bedtimes_out_of_order(conn, window), _WARN, **_scope(window)
        )


@_checks.check(
    WEARABLE_DATA_KEY,
    description=f"From {DAY_DUE_HOUR_UTC:02d}:00 UTC, every active connection has yesterday (UTC) in "
    f"wearable_data or a row in {wh.DAY_STATUS_TABLE} that says why not.",
)
def yesterday_present_or_explained(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    now = utc_now()
    yesterday = now.date() - timedelta(days=1)
    day = dg.MetadataValue.text(yesterday.isoformat())
    if now.hour < DAY_DUE_HOUR_UTC:
        return dg.AssetCheckResult(
            passed=True, severity=_WARN, metadata={"day": day, "checked": "not yet: due at 06:00 UTC"}
        )
    with warehouse.connect("check: yesterday present or explained") as conn:
        found = wh.days_without_data_or_status(conn, yesterday)
    if found is None:
        return dg.AssetCheckResult(
            passed=True,
            severity=_WARN,
            metadata={"day": day, "checked": f"nothing: {wh.DAY_STATUS_TABLE} does not exist yet"},
        )
    return _offenders_result(found, _WARN, day=day)


_checks.add(WEBHOOKS_ANNOUNCED_CHANGES, webhooks_announced_changes)

# One step per checked asset (what `definitions.py` loads). `oura_available` stays a step of its own: it is
# one query for all the raw assets, and folded into their steps it would be one query each, and an error in
# it (it blocks nothing) would fail the raw assets' blocking steps and stop the patient graph.
CHECK_STEPS = _checks.steps()
spec_of = _checks.spec_of
