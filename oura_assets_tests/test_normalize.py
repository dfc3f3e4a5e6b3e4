"""Table-driven tests of the pure normalizers against CONTRACT §5.

Documents follow the shapes of oura-openapi.json (`PublicDailyReadiness`, `PublicDailySleep`,
`PublicModifiedSleepModel`, `PublicDailyActivity`, `PublicHeartRateRow`). The export carries no `examples`
for these schemas, so the builders below fill every documented field with plausible values and the cases
override what each one is about.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oura_assets.normalize import (
    METRIC_KEYS,
    DailyStatsRow,
    HeartRateDayStats,
    NormalizationError,
    WearableRow,
    activity_metrics,
    daily_stats_rows,
    day_offsets,
    heart_rate_day_stats,
    hrv_metrics,
    main_sleep_period,
    offset_for,
    readiness_metrics,
    sleep_metrics,
    to_utc_z,
    validate_document,
    wearable_rows,
)

DAY = date(2024, 6, 15)


def readiness_doc(day: str = "2024-06-15", **overrides: Any) -> dict[str, Any]:
    doc = {
        "id": f"readiness-{day}",
        "contributors": {
            "activity_balance": 56,
            "body_temperature": 98,
            "hrv_balance": 75,
            "previous_day_activity": 87,
            "previous_night": 81,
            "recovery_index": 100,
            "resting_heart_rate": 94,
            "sleep_balance": 70,
            "sleep_regularity": 83,
        },
        "day": day,
        "score": 82,
        "temperature_deviation": -0.21,
        "temperature_trend_deviation": 0.05,
        "timestamp": f"{day}T00:00:00+02:00",
        # Older exports add a meta object (OURA-NOTES.md); it must be ignored.
        "meta": {"updated_at": f"{day}T07:12:00+02:00", "version": 3},
    }
    return {**doc, **overrides}


def daily_sleep_doc(day: str = "2024-06-15", **overrides: Any) -> dict[str, Any]:
    doc = {
        "id": f"daily-sleep-{day}",
        "contributors": {
            "deep_sleep": 92,
            "efficiency": 88,
            "latency": 79,
            "rem_sleep": 85,
            "restfulness": 71,
            "timing": 64,
            "total_sleep": 90,
        },
        "day": day,
        "score": 78,
        "timestamp": f"{day}T00:00:00+02:00",
    }
    return {**doc, **overrides}


def sleep_period(day: str = "2024-06-15", **overrides: Any) -> dict[str, Any]:
    doc = {
        "id": f"sleep-{day}",
        "average_breath": 14.25,
        "average_heart_rate": 56.375,
        "average_hrv": 48,
        "awake_time": 2400,
        "bedtime_end": f"{day}T06:45:30+02:00",
        "bedtime_start": "2024-06-14T22:30:00+02:00",
        "day": day,
        "deep_sleep_duration": 5400,
        "efficiency": 91,
        "heart_rate": {
            "interval": 300.0,
            "items": [60.0, 55.0, None, 52.0],
            "timestamp": "2024-06-14T22:30:00+02:00",
        },
        "hrv": {
            "interval": 300.0,
            "items": [40.0, None, 71.0, 38.0],
            "timestamp": "2024-06-14T22:30:00+02:00",
        },
        "latency": 600,
        "light_sleep_duration": 14400,
        "low_battery_alert": False,
        "lowest_heart_rate": 49,
        "movement_30_sec": "1143222134",
        "period": 0,
        "readiness": None,
        "readiness_score_delta": None,
        "rem_sleep_duration": 6300,
        "restless_periods": 210,
        "sleep_phase_5_min": "444423323441114",
        "sleep_score_delta": None,
        "time_in_bed": 29730,
        "total_sleep_duration": 26100,
        "type": "long_sleep",
    }
    return {**doc, **overrides}


def activity_doc(day: str = "2024-06-15", **overrides: Any) -> dict[str, Any]:
    doc = {
        "id": f"activity-{day}",
        "active_calories": 412,
        "average_met_minutes": 1.5,
        "class_5_min": "001233334555524001",
        "contributors": {
            "meet_daily_targets": 60,
            "move_every_hour": 100,
            "recovery_time": 95,
            "stay_active": 80,
            "training_frequency": 71,
            "training_volume": 97,
        },
        "day": day,
        "equivalent_walking_distance": 8030,
        "high_activity_met_minutes": 0,
        "high_activity_time": 0,
        "inactivity_alerts": 1,
        "low_activity_met_minutes": 180,
        "low_activity_time": 11400,
        "medium_activity_met_minutes": 90,
        "medium_activity_time": 1800,
        "met": {"interval": 60.0, "items": [0.9, 1.2], "timestamp": f"{day}T04:00:00+02:00"},
        "meters_to_target": 1200,
        "non_wear_time": 600,
        "resting_time": 30000,
        "score": 85,
        "sedentary_met_minutes": 20,
        "sedentary_time": 25000,
        "steps": 9876,
        "target_calories": 450,
        "target_meters": 9000,
        "timestamp": f"{day}T04:00:00+02:00",
        "total_calories": 2350,
    }
    return {**doc, **overrides}


def hr(timestamp: str, bpm: int, source: str = "awake") -> dict[str, Any]:
    return {"timestamp": timestamp, "bpm": bpm, "source": source}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            readiness_doc(),
            {
                "score": 82,
                "temperatureDeviation": -0.21,
                "temperatureTrendDeviation": 0.05,
                "activityBalance": 56,
                "bodyTemperature": 98,
                "hrvBalance": 75,
                "previousDayActivity": 87,
                "previousNight": 81,
                "recoveryIndex": 100,
                "restingHeartRate": 94,
                "sleepBalance": 70,
            },
            id="full-document",
        ),
        pytest.param(
            readiness_doc(
                score=None,
                temperature_deviation=None,
                temperature_trend_deviation=None,
                contributors=dict.fromkeys(readiness_doc()["contributors"]),
            ),
            dict.fromkeys(METRIC_KEYS["readiness"]),
            id="nulls-everywhere",
        ),
        pytest.param(
            {"id": "r1", "day": "2024-06-15", "score": 70},
            {**dict.fromkeys(METRIC_KEYS["readiness"]), "score": 70},
            id="missing-contributors-and-optionals",
        ),
        pytest.param(
            readiness_doc(contributors=None, score=82.0),
            {
                **dict.fromkeys(METRIC_KEYS["readiness"]),
                "score": 82,
                "temperatureDeviation": -0.21,
                "temperatureTrendDeviation": 0.05,
            },
            id="null-contributors-float-score",
        ),
    ],
)
def test_readiness_metrics(doc: dict, expected: dict) -> None:
    metrics = readiness_metrics(doc)
    assert metrics == expected
    assert tuple(metrics) == METRIC_KEYS["readiness"]
    assert all(type(metrics[k]) is int for k in ("score",) if metrics[k] is not None)


def test_readiness_contributors_are_scores_not_vitals() -> None:
    doc = readiness_doc(contributors={"resting_heart_rate": 94, "body_temperature": 98})
    metrics = readiness_metrics(doc)
    assert (metrics["restingHeartRate"], metrics["bodyTemperature"]) == (94, 98)
    assert "sleepRegularity" not in metrics


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            activity_doc(),
            {
                "score": 85,
                "activeCalories": 412,
                "totalCalories": 2350,
                "steps": 9876,
                "equivalentWalkingDistance": 8030,
                "inactivityAlerts": 1,
                "meetDailyTargets": 60,
                "moveEveryHour": 100,
                "trainingFrequency": 71,
                "trainingVolume": 97,
            },
            id="full-document",
        ),
        pytest.param(
            {"id": "a1", "day": "2024-06-15", "steps": 7.0, "score": None},
            {**dict.fromkeys(METRIC_KEYS["activity"]), "steps": 7},
            id="missing-contributors-float-steps",
        ),
    ],
)
def test_activity_metrics(doc: dict, expected: dict) -> None:
    metrics = activity_metrics(doc)
    assert metrics == expected
    assert tuple(metrics) == METRIC_KEYS["activity"]


FULL_SLEEP = {
    "score": 78,
    "restfulness": 71,
    "timing": 64,
    "totalSleep": 26100,
    "efficiency": 91,
    "latency": 600,
    "remSleep": 6300,
    "deepSleep": 5400,
    "lightSleep": 14400,
    "awake": 2400,
    "bedtimeStart": "2024-06-14T20:30:00Z",
    "bedtimeEnd": "2024-06-15T04:45:30Z",
}
PERIOD_ONLY = {**FULL_SLEEP, "score": None, "restfulness": None, "timing": None}
DAILY_ONLY = {**dict.fromkeys(METRIC_KEYS["sleep"]), "score": 78, "restfulness": 71, "timing": 64}


@pytest.mark.parametrize(
    ("daily", "period", "expected"),
    [
        pytest.param(daily_sleep_doc(), sleep_period(), FULL_SLEEP, id="daily-and-main-period"),
        pytest.param(None, sleep_period(), PERIOD_ONLY, id="period-without-daily-sleep"),
        pytest.param(daily_sleep_doc(), None, DAILY_ONLY, id="daily-sleep-without-period"),
        pytest.param(None, None, dict.fromkeys(METRIC_KEYS["sleep"]), id="neither"),
        pytest.param(
            daily_sleep_doc(contributors=None),
            None,
            {**dict.fromkeys(METRIC_KEYS["sleep"]), "score": 78},
            id="daily-sleep-missing-contributors",
        ),
        pytest.param(
            None,
            sleep_period(bedtime_end=None, total_sleep_duration=None, efficiency=None),
            {**PERIOD_ONLY, "bedtimeEnd": None, "totalSleep": None, "efficiency": None},
            id="in-progress-sleep-bedtime-end-null",
        ),
        pytest.param(
            None,
            sleep_period(
                bedtime_start="2024-06-14T23:15:00-07:00", bedtime_end="2024-06-15T07:00:00.000-07:00"
            ),
            {**PERIOD_ONLY, "bedtimeStart": "2024-06-15T06:15:00Z", "bedtimeEnd": "2024-06-15T14:00:00Z"},
            id="negative-offset-bedtimes",
        ),
    ],
)
def test_sleep_metrics(daily: dict | None, period: dict | None, expected: dict) -> None:
    metrics = sleep_metrics(daily, period)
    assert metrics == expected
    assert tuple(metrics) == METRIC_KEYS["sleep"]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        pytest.param("2024-06-14T22:30:00+02:00", "2024-06-14T20:30:00Z", id="plus-02"),
        pytest.param("2024-06-14T20:30:00-07:00", "2024-06-15T03:30:00Z", id="minus-07-next-utc-day"),
        pytest.param("2024-06-15T03:00:00+05:30", "2024-06-14T21:30:00Z", id="plus-0530-previous-utc-day"),
        pytest.param("2024-06-15T06:15:45+14:00", "2024-06-14T16:15:45Z", id="plus-14-keeps-seconds"),
        pytest.param("2024-06-14T20:30:00Z", "2024-06-14T20:30:00Z", id="z"),
        pytest.param("2024-06-14T20:30:00.000Z", "2024-06-14T20:30:00Z", id="millis-z"),
        pytest.param("2024-06-14T20:30:59.999999+00:00", "2024-06-14T20:30:59Z", id="micros-truncated"),
        pytest.param("2024-12-31T23:59:59.5-01:00", "2025-01-01T00:59:59Z", id="year-change-fraction"),
        pytest.param(None, None, id="null"),
    ],
)
def test_to_utc_z(ts: str | None, expected: str | None) -> None:
    assert to_utc_z(ts) == expected


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param("2024-06-14T20:30:00", id="naive"),
        pytest.param("yesterday", id="garbage"),
        pytest.param(1718397000, id="number"),
    ],
)
def test_to_utc_z_rejects(ts: Any) -> None:
    with pytest.raises(NormalizationError):
        to_utc_z(ts)


@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)),
    offset_minutes=st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_to_utc_z_same_instant_property(moment: datetime, offset_minutes: int) -> None:
    from datetime import timezone

    local = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    out = to_utc_z(local.isoformat())
    assert out is not None and out.endswith("Z") and len(out) == 20
    back = datetime.fromisoformat(out)
    assert back == local.replace(microsecond=0)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        pytest.param(
            sleep_period(),
            {"averageHrv": 48, "maxHrv": 71.0, "minHrv": 38.0, "restingHeartRate": 49},
            id="items-with-nulls",
        ),
        pytest.param(
            sleep_period(
                hrv={"interval": 300.0, "items": [None, None], "timestamp": "2024-06-14T22:30:00+02:00"}
            ),
            {"averageHrv": 48, "maxHrv": None, "minHrv": None, "restingHeartRate": 49},
            id="all-items-null",
        ),
        pytest.param(
            sleep_period(hrv=None, average_hrv=None),
            {"averageHrv": None, "maxHrv": None, "minHrv": None, "restingHeartRate": 49},
            id="hrv-null",
        ),
        pytest.param(
            {k: v for k, v in sleep_period().items() if k != "hrv"},
            {"averageHrv": 48, "maxHrv": None, "minHrv": None, "restingHeartRate": 49},
            id="hrv-absent",
        ),
        pytest.param(
            sleep_period(hrv={"interval": 300.0, "timestamp": "x"}),
            {"averageHrv": 48, "maxHrv": None, "minHrv": None, "restingHeartRate": 49},
            id="hrv-items-absent",
        ),
        pytest.param(
            sleep_period(hrv={"interval": 300.0, "items": [35], "timestamp": "x"}, lowest_heart_rate=None),
            {"averageHrv": 48, "maxHrv": 35, "minHrv": 35, "restingHeartRate": None},
            id="single-item-no-lowest-hr",
        ),
        pytest.param(None, dict.fromkeys(METRIC_KEYS["hrv"]), id="no-period"),
    ],
)
def test_hrv_metrics(period: dict | None, expected: dict) -> None:
    metrics = hrv_metrics(period)
    assert metrics == expected
    assert tuple(metrics) == METRIC_KEYS["hrv"]


def period(
    pid: str, type_: str | None, duration: int | None, start: str = "2024-06-14T22:00:00+00:00"
) -> dict:
    return sleep_period(id=pid, type=type_, total_sleep_duration=duration, bedtime_start=start)


@pytest.mark.parametrize(
    ("periods", "expected_id"),
    [
        pytest.param([period("main", "long_sleep", 25000)], "main", id="only-long-sleep"),
        pytest.param(
            [period("nap", "late_nap", 30000), period("main", "long_sleep", 20000)],
            "main",
            id="long-sleep-beats-longer-nap",
        ),
        pytest.param(
            [period("short", "long_sleep", 11000), period("main", "long_sleep", 25000)],
            "main",
            id="longest-of-two-long-sleeps",
        ),
        pytest.param(
            [
                period("rest", "rest", 40000),
                period("deleted", "deleted", 50000),
                period("main", "long_sleep", 20000),
            ],
            "main",
            id="longer-rest-and-deleted-ignored",
        ),
        pytest.param(
            [period("rest", "rest", 40000), period("nap", "late_nap", 3000), period("sleep", "sleep", 9000)],
            "sleep",
            id="only-naps-longest-wins",
        ),
        pytest.param(
            [period("rest", "rest", 40000), period("deleted", "deleted", 9)], None, id="only-rest-deleted"
        ),
        pytest.param([], None, id="no-periods"),
        pytest.param(
            [period("null", "long_sleep", None), period("main", "long_sleep", 100)],
            "main",
            id="null-duration-sorts-last",
        ),
        pytest.param([period("null", "long_sleep", None)], "null", id="only-null-duration"),
        pytest.param([period("untyped", None, 9000)], "untyped", id="null-type-is-a-period"),
        pytest.param(
            [
                period("later", "long_sleep", 25000, "2024-06-14T23:00:00+02:00"),
                period("earlier", "long_sleep", 25000, "2024-06-14T22:30:00+00:00"),
            ],
            "earlier",
            id="tie-later-bedtime-start-as-instant",
        ),
        pytest.param(
            [period("b", "long_sleep", 25000), period("a", "long_sleep", 25000)],
            "b",
            id="tie-greater-id",
        ),
    ],
)
def test_main_sleep_period(periods: list[dict], expected_id: str | None) -> None:
    chosen = main_sleep_period(periods)
    assert (chosen or {}).get("id") == expected_id
    assert main_sleep_period(list(reversed(periods))) is chosen or expected_id is None


PERIOD_TYPES = st.sampled_from(["long_sleep", "sleep", "late_nap", "rest", "deleted", None])


@given(
    st.lists(
        st.tuples(PERIOD_TYPES, st.one_of(st.none(), st.integers(0, 50000)), st.integers(0, 3)),
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_main_sleep_period_properties(specs: list[tuple], rnd: Any) -> None:
    periods = [period(f"p{i}", t, d, f"2024-06-14T2{h}:00:00+00:00") for i, (t, d, h) in enumerate(specs)]
    chosen = main_sleep_period(periods)
    shuffled = periods[:]
    rnd.shuffle(shuffled)
    assert main_sleep_period(shuffled) is chosen
    eligible = [p for p in periods if p["type"] not in ("rest", "deleted")]
    if not eligible:
        assert chosen is None
        return
    assert chosen is not None and chosen["type"] not in ("rest", "deleted")
    if any(p["type"] == "long_sleep" for p in eligible):
        assert chosen["type"] == "long_sleep"
    pool = [p for p in eligible if p["type"] == chosen["type"] or chosen["type"] != "long_sleep"]
    durations = [p["total_sleep_duration"] for p in pool if p["total_sleep_duration"] is not None]
    if durations:
        assert chosen["total_sleep_duration"] == max(durations)


def rows_by_key(rows: list[WearableRow]) -> dict[tuple[date, str], dict]:
    return {(r.day, r.metric_type): r.metrics for r in rows}


def test_wearable_rows_full_day() -> None:
    rows = wearable_rows(
        "patient-1",
        [readiness_doc()],
        [daily_sleep_doc()],
        [sleep_period(), sleep_period(id="nap", type="late_nap", total_sleep_duration=99999)],
        [activity_doc()],
    )
    assert [(r.day, r.metric_type) for r in rows] == [
        (DAY, "activity"),
        (DAY, "hrv"),
        (DAY, "readiness"),
        (DAY, "sleep"),
    ]
    assert {(r.patient_id, r.source) for r in rows} == {("patient-1", "oura")}
    metrics = rows_by_key(rows)
    assert metrics[(DAY, "sleep")] == FULL_SLEEP
    assert metrics[(DAY, "hrv")]["maxHrv"] == 71.0
    for row in rows:
        assert tuple(row.metrics) == METRIC_KEYS[row.metric_type]


@pytest.mark.parametrize(
    ("inputs", "expected_keys"),
    [
        pytest.param(
            {"readiness": [readiness_doc("2024-06-15")], "activity": [activity_doc("2024-06-17")]},
            [(date(2024, 6, 15), "readiness"), (date(2024, 6, 17), "activity")],
            id="days-not-worn-have-no-rows",
        ),
        pytest.param(
            {"daily_sleep": [daily_sleep_doc()]},
            [(DAY, "sleep")],
            id="daily-sleep-alone-no-hrv",
        ),
        pytest.param(
            {"sleep_periods": [sleep_period()]},
            [(DAY, "hrv"), (DAY, "sleep")],
            id="period-alone-gives-sleep-and-hrv",
        ),
        pytest.param(
            {"sleep_periods": [sleep_period(type="rest"), sleep_period(id="x", type="deleted")]},
            [],
            id="only-rest-and-deleted-periods",
        ),
        pytest.param(
            {
                "readiness": [
                    readiness_doc(
                        score=None,
                        temperature_deviation=None,
                        temperature_trend_deviation=None,
                        contributors={},
                    )
                ]
            },
            [],
            id="all-null-readiness-document-no-row",
        ),
        pytest.param(
            {"sleep_periods": [sleep_period("2024-06-16"), sleep_period("2024-06-14")]},
            [
                (date(2024, 6, 14), "hrv"),
                (date(2024, 6, 14), "sleep"),
                (date(2024, 6, 16), "hrv"),
                (date(2024, 6, 16), "sleep"),
            ],
            id="sorted-by-day-then-type",
        ),
        pytest.param({}, [], id="nothing"),
    ],
)
def test_wearable_rows_exist_only_where_oura_returned_documents(inputs: dict, expected_keys: list) -> None:
    rows = wearable_rows(
        "p",
        inputs.get("readiness", []),
        inputs.get("daily_sleep", []),
        inputs.get("sleep_periods", []),
        inputs.get("activity", []),
    )
    assert [(r.day, r.metric_type) for r in rows] == expected_keys
    assert all(any(v is not None for v in r.metrics.values()) for r in rows)


def test_wearable_rows_duplicate_documents_keep_last() -> None:
    old, new = readiness_doc(score=60), readiness_doc(score=88)
    old_period = sleep_period(total_sleep_duration=30000)
    new_period = sleep_period(total_sleep_duration=20000)
    rows = wearable_rows(
        "p", [old, new, new], [], [old_period, new_period], [activity_doc(), activity_doc(steps=1)]
    )
    metrics = rows_by_key(rows)
    assert len(rows) == 4
    assert metrics[(DAY, "readiness")]["score"] == 88
    assert metrics[(DAY, "sleep")]["totalSleep"] == 20000
    assert metrics[(DAY, "activity")]["steps"] == 1


def test_wearable_rows_do_not_mutate_inputs() -> None:
    docs = [readiness_doc(), daily_sleep_doc(), sleep_period(), activity_doc()]
    before = copy.deepcopy(docs)
    wearable_rows("p", [docs[0]], [docs[1]], [docs[2]], [docs[3]])
    assert docs == before


@pytest.mark.parametrize(
    ("collection_arg", "doc", "message_parts"),
    [
        pytest.param(
            "readiness",
            {**readiness_doc(), "day": None},
            ["daily_readiness", "readiness-2024-06-15", "day"],
            id="missing-day",
        ),
        pytest.param(
            "daily_sleep",
            daily_sleep_doc(day="15/06/2024"),
            ["daily_sleep", "daily-sleep-", "day"],
            id="bad-day",
        ),
        pytest.param("activity", activity_doc(id=None), ["daily_activity", "id"], id="missing-id"),
        pytest.param("sleep_periods", ["not", "a", "dict"], ["sleep", "list"], id="not-an-object"),
        pytest.param(
            "readiness",
            readiness_doc(score="82"),
            ["daily_readiness", "readiness-", "score", "'82'"],
            id="string-score",
        ),
        pytest.param("activity", activity_doc(steps=True), ["daily_activity", "steps"], id="bool-steps"),
        pytest.param(
            "activity",
            activity_doc(steps=12.5),
            ["daily_activity", "steps", "integer"],
            id="fractional-steps",
        ),
        pytest.param(
            "sleep_periods",
            sleep_period(hrv={"items": [40, "high"]}),
            ["sleep", "sleep-2024-06-15", "hrv.items"],
            id="string-hrv-item",
        ),
        pytest.param(
            "sleep_periods", sleep_period(bedtime_start="22:30"), ["sleep", "bedtime_start"], id="bad-bedtime"
        ),
        pytest.param(
            "readiness",
            readiness_doc(contributors=[1, 2]),
            ["daily_readiness", "contributors"],
            id="contributors-list",
        ),
    ],
)
def test_wearable_rows_bad_payload_raises_naming_document(
    collection_arg: str, doc: Any, message_parts: list
) -> None:
    args = {"readiness": [], "daily_sleep": [], "sleep_periods": [], "activity": []}
    args[collection_arg] = [doc]
    with pytest.raises(NormalizationError) as raised:
        wearable_rows("p", **args)
    for part in message_parts:
        assert part in str(raised.value)


@pytest.mark.parametrize(
    ("collection", "doc", "reason"),
    [
        pytest.param("daily_readiness", readiness_doc(), None, id="readiness-ok"),
        pytest.param("daily_sleep", daily_sleep_doc(), None, id="daily-sleep-ok"),
        pytest.param("sleep", sleep_period(bedtime_end=None), None, id="in-progress-sleep-ok"),
        pytest.param("daily_activity", activity_doc(), None, id="activity-ok"),
        pytest.param("heartrate", hr("2024-06-15T10:00:00.000Z", 60), None, id="heartrate-ok"),
        pytest.param("daily_readiness", "oops", "expected a JSON object", id="not-an-object"),
        pytest.param("daily_readiness", readiness_doc(id=""), "missing or empty 'id'", id="empty-id"),
        pytest.param("daily_sleep", daily_sleep_doc(day=None), "missing 'day'", id="missing-day"),
        pytest.param(
            "daily_activity", activity_doc(score="85"), "'score' should be a number", id="string-score"
        ),
        pytest.param("daily_activity", activity_doc(timestamp="noon"), "'timestamp'", id="bad-timestamp"),
        pytest.param(
            "sleep", sleep_period(total_sleep_duration="8h"), "total_sleep_duration", id="string-duration"
        ),
        pytest.param(
            "heartrate", hr("2024-06-15T10:00:00", 60), "without a UTC offset", id="heartrate-naive"
        ),
        pytest.param(
            "heartrate", {"timestamp": "2024-06-15T10:00:00Z"}, "missing 'bpm'", id="heartrate-no-bpm"
        ),
    ],
)
def test_validate_document(collection: str, doc: Any, reason: str | None) -> None:
    got = validate_document(collection, doc)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_validate_document_unknown_collection() -> None:
    with pytest.raises(ValueError, match="unknown Oura collection"):
        validate_document("workouts", {})


def test_validate_document_agrees_with_normalizers() -> None:
    bad = readiness_doc(temperature_deviation="warm")
    assert validate_document("daily_readiness", bad) is not None
    with pytest.raises(NormalizationError):
        wearable_rows("p", [bad], [], [], [])


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        pytest.param(
            {
                "readiness": [readiness_doc(timestamp="2024-06-15T00:00:00+10:00")],
                "daily_sleep": [daily_sleep_doc(timestamp="2024-06-15T00:00:00+03:00")],
                "activity": [activity_doc(timestamp="2024-06-15T04:00:00+04:00")],
            },
            {DAY: timedelta(hours=10)},
            id="readiness-first",
        ),
        pytest.param(
            {
                "readiness": [readiness_doc(timestamp=None)],
                "daily_sleep": [daily_sleep_doc(timestamp="2024-06-15T00:00:00-07:00")],
                "activity": [activity_doc(timestamp="2024-06-15T04:00:00+04:00")],
            },
            {DAY: timedelta(hours=-7)},
            id="null-readiness-timestamp-falls-to-sleep",
        ),
        pytest.param(
            {
                "activity": [
                    activity_doc("2024-06-16", timestamp="2024-06-16T04:00:00+05:30"),
                    activity_doc("2024-06-14", timestamp="2024-06-14T04:00:00Z"),
                ]
            },
            {date(2024, 6, 14): timedelta(0), date(2024, 6, 16): timedelta(hours=5, minutes=30)},
            id="activity-only-several-days",
        ),
        pytest.param({}, {}, id="no-documents"),
    ],
)
def test_day_offsets(inputs: dict, expected: dict) -> None:
    offsets = day_offsets(
        inputs.get("readiness", []), inputs.get("daily_sleep", []), inputs.get("activity", [])
    )
    assert offsets == expected


OFFSETS = {date(2024, 6, 10): timedelta(hours=2), date(2024, 6, 14): timedelta(hours=-7)}


@pytest.mark.parametrize(
    ("day", "offsets", "expected"),
    [
        pytest.param(date(2024, 6, 14), OFFSETS, timedelta(hours=-7), id="own-offset"),
        pytest.param(date(2024, 6, 11), OFFSETS, timedelta(hours=2), id="nearest-earlier"),
        pytest.param(date(2024, 6, 13), OFFSETS, timedelta(hours=-7), id="nearest-later"),
        pytest.param(date(2024, 6, 12), OFFSETS, timedelta(hours=2), id="tie-goes-to-earlier"),
        pytest.param(date(2024, 7, 30), OFFSETS, timedelta(hours=-7), id="after-all-known"),
        pytest.param(date(2024, 6, 12), {}, timedelta(0), id="nothing-known-utc"),
    ],
)
def test_offset_for(day: date, offsets: dict, expected: timedelta) -> None:
    assert offset_for(day, offsets) == expected


D14, D15, D16 = date(2024, 6, 14), date(2024, 6, 15), date(2024, 6, 16)


@pytest.mark.parametrize(
    ("samples", "offsets", "days", "expected"),
    [
        pytest.param(
            # 23:30 local on the 15th at +10:00 is 13:30Z on the 15th; 00:30 local on the 16th is 14:30Z.
            [hr("2024-06-15T13:30:00+00:00", 60), hr("2024-06-15T14:30:00+00:00", 90)],
            {D15: timedelta(hours=10), D16: timedelta(hours=10)},
            [D15, D16],
            {D15: (60, 60, 60.0, 1, 600), D16: (90, 90, 90.0, 1, 600)},
            id="plus-10-2330-local-stays-on-its-day",
        ),
        pytest.param(
            # 23:30 local on the 15th at -07:00 is 06:30Z on the 16th.
            [hr("2024-06-16T06:30:00.000Z", 70), hr("2024-06-16T07:30:00.000Z", 80)],
            {D15: timedelta(hours=-7), D16: timedelta(hours=-7)},
            [D15, D16],
            {D15: (70, 70, 70.0, 1, -420), D16: (80, 80, 80.0, 1, -420)},
            id="minus-07-2330-local-stays-on-its-day",
        ),
        pytest.param(
            [hr("2024-06-16T06:30:00Z", 70)],
            {D14: timedelta(hours=-7)},
            [D15, D16],
            {D15: (70, 70, 70.0, 1, -420)},
            id="day-without-own-offset-uses-nearest",
        ),
        pytest.param(
            [hr("2024-06-15T18:00:00Z", 65)],
            {},
            [D15],
            {D15: (65, 65, 65.0, 1, 0)},
            id="no-offsets-utc",
        ),
        pytest.param(
            [
                hr("2024-06-15T10:00:00+00:00", 60),
                hr("2024-06-15T10:00:00.000Z", 60),
                hr("2024-06-15T12:00:00+02:00", 60),
                hr("2024-06-15T10:00:00Z", 60, source="workout"),
                hr("2024-06-15T11:00:00Z", 63),
            ],
            {},
            [D15],
            {D15: (60, 63, 61.0, 3, 0)},
            id="duplicates-same-instant-and-source-count-once",
        ),
        pytest.param(
            [hr("2024-06-15T10:00:00Z", 60), hr("2024-06-15T10:05:00Z", 61), hr("2024-06-15T10:10:00Z", 61)],
            {},
            [D15],
            {D15: (60, 61, 182 / 3, 3, 0)},
            id="hr-avg-kept-at-full-precision-not-rounded",
        ),
        pytest.param(
            [hr("2024-06-14T12:00:00Z", 60), hr("2024-06-16T12:00:00Z", 61)],
            {},
            [D15, D16],
            {D16: (61, 61, 61.0, 1, 0)},
            id="only-days-asked-days-without-samples-omitted",
        ),
        pytest.param(
            [hr("2024-06-15T12:00:00Z", None), {"timestamp": None, "bpm": 50, "source": "awake"}],
            {},
            [D15],
            {},
            id="null-bpm-or-timestamp-dropped",
        ),
        pytest.param([], {D15: timedelta(hours=2)}, [D15], {}, id="not-worn"),
        pytest.param(
            # The offset falls from +02:00 to +01:00: the 15th ends at 22:00Z, the 16th starts at 23:00Z, so
            # 22:30Z is in neither local day; with the reverse change an instant can be in both.
            [hr("2024-06-15T22:30:00Z", 70), hr("2024-06-15T21:59:59Z", 71), hr("2024-06-15T23:00:00Z", 72)],
            {D15: timedelta(hours=2), D16: timedelta(hours=1)},
            [D15, D16],
            {D15: (71, 71, 71.0, 1, 120), D16: (72, 72, 72.0, 1, 60)},
            id="window-edges-follow-each-days-offset",
        ),
    ],
)
def test_heart_rate_day_stats(samples: list, offsets: dict, days: list, expected: dict) -> None:
    stats = heart_rate_day_stats(samples, offsets, days)
    got = {
        day: (s.hr_min, s.hr_max, s.hr_avg, s.hr_samples, int(s.utc_offset.total_seconds() // 60))
        for day, s in stats.items()
    }
    assert got == expected


def test_heart_rate_day_stats_accepts_polars_frames() -> None:
    utc = pl.DataFrame(
        {
            "timestamp": [datetime(2024, 6, 16, 6, 30, tzinfo=UTC), datetime(2024, 6, 16, 6, 30, tzinfo=UTC)],
            "bpm": [70, 70],
            "source": ["awake", "awake"],
            "timestamp_unix": [0, 0],
        }
    )
    naive = utc.with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    offset = {D15: timedelta(hours=-7)}
    expected = {D15: HeartRateDayStats(70, 70, 70.0, 1, timedelta(hours=-7))}
    assert heart_rate_day_stats(utc, offset, [D15, D16]) == expected
    assert heart_rate_day_stats(naive, offset, [D15, D16]) == expected


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        pytest.param([hr("2024-06-15 10h", 60)], "timestamp", id="bad-timestamp"),
        pytest.param([hr("2024-06-15T10:00:00Z", "60")], "bpm", id="string-bpm"),
        pytest.param(["2024-06-15T10:00:00Z"], "JSON object", id="not-an-object"),
    ],
)
def test_heart_rate_day_stats_bad_samples(samples: list, message: str) -> None:
    with pytest.raises(NormalizationError, match=message):
        heart_rate_day_stats(samples, {}, [D15])


HR_SAMPLE = st.builds(
    lambda minute, bpm, source: (minute, bpm, source),
    st.integers(0, 3 * 24 * 60 - 1),
    st.integers(30, 200),
    st.sampled_from(["awake", "rest", "workout"]),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(HR_SAMPLE, max_size=40),
    st.integers(-12 * 4, 14 * 4).map(lambda quarters: timedelta(minutes=15 * quarters)),
    st.randoms(use_true_random=False),
)
def test_heart_rate_day_stats_properties(raw: list[tuple], offset: timedelta, rnd: Any) -> None:
    base = datetime(2024, 6, 14, tzinfo=UTC)
    samples = [
        hr((base + timedelta(minutes=m)).isoformat().replace("+00:00", "Z"), bpm, src) for m, bpm, src in raw
    ]
    days = [date(2024, 6, 12) + timedelta(days=i) for i in range(6)]
    offsets = {D15: offset}
    stats = heart_rate_day_stats(samples, offsets, days)

    doubled = samples + samples[::-1]
    rnd.shuffle(doubled)
    assert heart_rate_day_stats(doubled, offsets, days) == stats
    frame = pl.DataFrame(
        {
            "timestamp": [base + timedelta(minutes=m) for m, _, _ in raw],
            "bpm": [bpm for _, bpm, _ in raw],
            "source": [src for _, _, src in raw],
        },
        schema={"timestamp": pl.Datetime("us", "UTC"), "bpm": pl.Int64, "source": pl.String},
    )
    assert heart_rate_day_stats(frame, offsets, days) == stats
    # One offset for every day: the local days tile time, so each distinct sample lands exactly once.
    assert sum(s.hr_samples for s in stats.values()) == len({(m, src) for m, _, src in raw})
    for day, s in stats.items():
        assert s.hr_min <= s.hr_avg <= s.hr_max
        local = {(base + timedelta(minutes=m) + offset).date() for m, _, _ in raw}
        assert day in local


def test_heart_rate_day_stats_million_samples_each_counted_once() -> None:
    # Correctness only: the speed of this aggregation is measured against a baseline in bench/ (run.py,
    # benchmark hr_stats), not asserted here, where a shared CI core would make a time bound flaky.
    n = 1_000_000
    start = datetime(2024, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                start, start + timedelta(seconds=5 * (n - 1)), interval="5s", time_zone="UTC", eager=True
            ),
            "bpm": pl.int_range(0, n, eager=True) % 50 + 50,
            "source": pl.repeat("awake", n, eager=True),
        }
    )
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(60)]
    offsets = {day: timedelta(hours=-7) for day in days[::5]}
    stats = heart_rate_day_stats(frame, offsets, days)
    assert sum(s.hr_samples for s in stats.values()) == n - int(7 * 3600 / 5)


def test_daily_stats_rows_come_from_wearable_rows() -> None:
    rows = wearable_rows(
        "p",
        [readiness_doc("2024-06-15")],
        [daily_sleep_doc("2024-06-15")],
        [sleep_period("2024-06-15")],
        [activity_doc("2024-06-15"), activity_doc("2024-06-14", score=None, steps=120)],
    )
    offsets = {D14: timedelta(hours=2), D15: timedelta(hours=2)}
    hr_stats = {
        D15: HeartRateDayStats(48, 140, 71.3, 850, timedelta(hours=2)),
        D16: HeartRateDayStats(50, 90, 60.5, 10, timedelta(hours=2)),
    }
    stats = daily_stats_rows("p", rows, hr_stats, offsets)
    assert stats == [
        DailyStatsRow(
            patient_id="p",
            day=D14,
            readiness_score=None,
            sleep_score=None,
            activity_score=None,
            total_sleep_seconds=None,
            steps=120,
            active_calories=412,
            total_calories=2350,
            average_hrv=None,
            resting_heart_rate=None,
            hr_min=None,
            hr_max=None,
            hr_avg=None,
            hr_samples=0,
            utc_offset_minutes=120,
        ),
        DailyStatsRow(
            patient_id="p",
            day=D15,
            readiness_score=82,
            sleep_score=78,
            activity_score=85,
            total_sleep_seconds=26100,
            steps=9876,
            active_calories=412,
            total_calories=2350,
            average_hrv=48,
            resting_heart_rate=49,
            hr_min=48,
            hr_max=140,
            hr_avg=71.3,
            hr_samples=850,
            utc_offset_minutes=120,
        ),
        DailyStatsRow(
            patient_id="p",
            day=D16,
            readiness_score=None,
            sleep_score=None,
            activity_score=None,
            total_sleep_seconds=None,
            steps=None,
            active_calories=None,
            total_calories=None,
            average_hrv=None,
            resting_heart_rate=None,
            hr_min=50,
            hr_max=90,
            hr_avg=60.5,
            hr_samples=10,
            utc_offset_minutes=120,
        ),
    ]
    assert {row.source for row in stats} == {"oura"}


@pytest.mark.parametrize(
    ("offset", "minutes"),
    [
        pytest.param(timedelta(hours=5, minutes=30), 330, id="plus-0530"),
        pytest.param(timedelta(hours=-7), -420, id="minus-07"),
        pytest.param(timedelta(hours=-9, minutes=-30), -570, id="minus-0930"),
    ],
)
def test_daily_stats_utc_offset_minutes(offset: timedelta, minutes: int) -> None:
    rows = wearable_rows("p", [readiness_doc()], [], [], [])
    (stats,) = daily_stats_rows("p", rows, {}, {D14: offset})
    assert stats.utc_offset_minutes == minutes


def test_daily_stats_rows_nothing_worn_no_rows() -> None:
    assert daily_stats_rows("p", [], {D15: HeartRateDayStats(0, 0, 0.0, 0, timedelta(0))}, {}) == []


def test_daily_stats_rows_rejects_other_patients_rows() -> None:
    rows = wearable_rows("someone-else", [readiness_doc()], [], [], [])
    with pytest.raises(ValueError, match="someone-else"):
        daily_stats_rows("p", rows, {}, {})


def test_end_to_end_local_day_and_agreement() -> None:
    readiness = [readiness_doc("2024-06-15", timestamp="2024-06-15T00:00:00-07:00")]
    activity = [activity_doc("2024-06-16", timestamp="2024-06-16T04:00:00-07:00")]
    samples = [
        hr("2024-06-16T06:30:00Z", 70),
        hr("2024-06-16T06:30:00.000Z", 70),
        hr("2024-06-16T07:30:00Z", 90),
    ]
    offsets = day_offsets(readiness, [], activity)
    rows = wearable_rows("p", readiness, [], [], activity)
    stats = daily_stats_rows("p", rows, heart_rate_day_stats(samples, offsets, [D15, D16]), offsets)
    assert [(s.day, s.readiness_score, s.activity_score, s.hr_samples, s.hr_avg) for s in stats] == [
        (D15, 82, None, 1, 70.0),
        (D16, None, 85, 1, 90.0),
    ]


def test_wearable_rows_two_ids_one_day_last_given_wins() -> None:
    first, other = readiness_doc(id="a", score=60), readiness_doc(id="b", score=70)
    revised_first = readiness_doc(id="a", score=65)
    rows = wearable_rows("p", [first, other, revised_first], [], [], [])
    assert [r.metrics["score"] for r in rows] == [65]
