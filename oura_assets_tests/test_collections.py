"""Workouts, sessions and the newer daily summaries, end to end: simulator → `dg.materialize` → SQL.

What lands in `oura_raw.workout` … `oura_raw.daily_cardiovascular_age`, `patient_graph.wearable_workouts`,
`patient_graph.wearable_sessions` and the daily stats' new columns, checked against the simulator's own
documents; a patient who did not grant a scope (skipped, said so, never failed); and a second run that
leaves every table as it was.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from oura_assets.config import OAUTH_SCOPES
from oura_assets.simulator import data as simdata
from oura_assets_tests.support import UNPACED, query, run_sync, snapshot

START, END = date(2024, 6, 3), date(2024, 6, 16)
DAYS = [START + timedelta(days=n) for n in range((END - START).days + 1)]
NEW_RAW = ("workout", "session", "daily_spo2", "daily_stress", "daily_resilience", "daily_cardiovascular_age")
ALL_SCOPES = (*OAUTH_SCOPES, "spo2Daily")


def _ring_user_with_busy_days() -> str:
    """A simulated user with, in the window, a day of two workouts and a day with a nap session."""
    for n in range(400):
        name = f"collections-{n}"
        workouts = simdata.documents(name, "workout", DAYS, datetime.now(UTC))
        sessions = simdata.documents(name, "session", DAYS, datetime.now(UTC))
        per_day = [sum(w["day"] == d.isoformat() for w in workouts) for d in DAYS]
        if max(per_day) >= 2 and any(s["type"] == "nap" for s in sessions):
            return name
    raise AssertionError("no simulated user with two workouts and a nap session in the window")


def _sim(name: str, collection: str) -> list[dict]:
    return simdata.documents(name, collection, DAYS, datetime.now(UTC))


def test_new_collections_land_raw_and_normalized_once_per_range_and_idempotently(
    pipeline_env, connect_patient, simulator
):
    ring = _ring_user_with_busy_days()
    connect_patient("p-all", ring, scopes=ALL_SCOPES)
    simulator.control.reset_stats()
    result = run_sync(START, END, run_config=UNPACED)
    assert result.success

    requests = simulator.control.stats()["requests"]
    for collection in NEW_RAW:
        route = next(r for r in requests if r.rstrip("/").endswith(f"/{collection}"))
        # One range fetch, paged: the 16 padded days at the simulator's 10 documents a page are at most two
        # pages (a day has at most 3 workouts or sessions here), never one request per day.
        assert 1 <= sum(requests[route].values()) <= 2, (collection, requests[route])
        assert set(requests[route]) == {"200"}

    for collection in NEW_RAW:
        expected = sorted(d["id"] for d in _sim(ring, collection))
        sql = f"SELECT id FROM oura_raw.{collection} ORDER BY id"  # noqa: S608 (a constant collection name)
        landed = [i for (i,) in query(pipeline_env, sql)]
        assert expected and landed == expected, collection

    workouts = _sim(ring, "workout")
    rows = query(
        pipeline_env,
        "SELECT id, day, start_at, end_at, activity, intensity, calories_kcal, distance_m, duration_seconds "
        "FROM patient_graph.wearable_workouts WHERE patient_id = 'p-all' ORDER BY start_at",
    )
    assert len(rows) == len(workouts)
    by_id = {w["id"]: w for w in workouts}
    for doc_id, day, start_at, end_at, activity, intensity, kcal, metres, seconds in rows:
        doc = by_id[doc_id]
        assert day.isoformat() == doc["day"]
        assert start_at == datetime.fromisoformat(doc["start_datetime"])
        assert end_at == datetime.fromisoformat(doc["end_datetime"])
        assert start_at.utcoffset() == timedelta(0)  # TIMESTAMPTZ read back in UTC
        assert (activity, intensity, kcal, metres) == (
            doc["activity"],
            doc["intensity"],
            doc["calories"],
            doc["distance"],
        )
        assert seconds == (end_at - start_at).total_seconds()
    busiest = query(
        pipeline_env,
        "SELECT max(n) FROM (SELECT day, count(*) AS n FROM patient_graph.wearable_workouts GROUP BY day)",
    )
    assert busiest == [(2,)]

    sessions = {s["id"]: s for s in _sim(ring, "session")}
    nap = query(
        pipeline_env,
        "SELECT id, session_type, hr_avg_bpm, hr_min_bpm, hr_max_bpm, hrv_avg_ms, samples "
        "FROM patient_graph.wearable_sessions WHERE session_type = 'nap'",
    )
    assert nap
    doc_id, _, hr_avg, hr_min, hr_max, hrv_avg, samples = nap[0]
    hr = [v for v in sessions[doc_id]["heart_rate"]["items"] if v is not None]
    assert samples == len(hr) and hr_min == min(hr) and hr_max == max(hr)
    assert hr_avg == pytest.approx(sum(hr) / len(hr)) and hrv_avg is not None
    assert query(pipeline_env, "SELECT count(*) FROM patient_graph.wearable_sessions") == [(len(sessions),)]

    stats = {
        day: rest
        for day, *rest in query(
            pipeline_env,
            "SELECT day, spo2_average_pct, breathing_disturbance_index, stress_high_seconds, "
            "recovery_high_seconds, resilience_level, vascular_age_years "
            "FROM patient_graph.patient_wearable_daily_stats WHERE patient_id = 'p-all'",
        )
    }
    for doc in _sim(ring, "daily_spo2"):
        spo2 = doc["spo2_percentage"]
        figures = stats[date.fromisoformat(doc["day"])]
        assert figures[0] == (spo2["average"] if spo2 else None)
        assert figures[1] == doc["breathing_disturbance_index"]
    for doc in _sim(ring, "daily_stress"):
        assert stats[date.fromisoformat(doc["day"])][2:4] == [doc["stress_high"], doc["recovery_high"]]
    for doc in _sim(ring, "daily_resilience"):
        assert stats[date.fromisoformat(doc["day"])][4] == doc["level"]
    for doc in _sim(ring, "daily_cardiovascular_age"):
        assert stats[date.fromisoformat(doc["day"])][5] == doc["vascular_age"]

    statuses = query(
        pipeline_env,
        "SELECT collection, status FROM patient_graph.wearable_collection_status WHERE patient_id = 'p-all'",
    )
    assert dict(statuses) == {c: "synced" for c in (*simdata_core(), *NEW_RAW, "heartrate")}

    # Materializing the same range again leaves every new table as it was (`*_at` times aside).
    tables = [
        *(f"oura_raw.{c}" for c in NEW_RAW),
        "patient_graph.wearable_workouts",
        "patient_graph.wearable_sessions",
        "patient_graph.patient_wearable_daily_stats",
        "patient_graph.wearable_collection_status",
    ]
    first = snapshot(pipeline_env, tables)
    assert run_sync(START, END, run_config=UNPACED).success
    assert snapshot(pipeline_env, tables) == first
    assert all(first[t] for t in tables)


def simdata_core() -> tuple[str, ...]:
    return ("daily_readiness", "daily_sleep", "sleep", "daily_activity")


def test_a_scope_not_granted_skips_its_collection_and_never_fails_the_patient(
    pipeline_env, connect_patient, simulator
):
    # Unticked `workout` on Oura's consent page; the connect flow never asks for `spo2Daily`.
    simulator.control.set_faults(users={"collections-no-workout": {"withhold_scopes": ["workout"]}})
    connect_patient("p-narrow", "collections-no-workout")
    # Granted `session` at first, withdrawn at Oura since: Oura answers 403 on that collection alone.
    connect_patient("p-withdrawn", "collections-withdrawn")
    simulator.control.set_faults(users={"collections-withdrawn": {"withhold_scopes": ["session"]}})
    simulator.control.reset_stats()

    result = run_sync(START, END, run_config=UNPACED)
    assert result.success

    statuses = {
        (patient, collection): (status, reason)
        for patient, collection, status, reason in query(
            pipeline_env,
            "SELECT patient_id, collection, status, reason FROM patient_graph.wearable_collection_status",
        )
    }
    status, reason = statuses[("p-narrow", "workout")]
    assert status == "scope_missing" and "`workout` scope" in reason
    assert statuses[("p-narrow", "daily_spo2")][0] == "scope_missing"
    assert "`spo2Daily` scope" in statuses[("p-narrow", "daily_spo2")][1]
    assert statuses[("p-narrow", "session")][0] == "synced"
    status, reason = statuses[("p-withdrawn", "session")]
    assert status == "forbidden" and "403" in reason
    assert statuses[("p-withdrawn", "workout")][0] == "synced"

    # A collection known not to be granted is not asked for; the withdrawn one was asked once and refused.
    requests = simulator.control.stats()["requests"]
    workout_route = next(r for r in requests if r.endswith("/workout"))
    assert requests[workout_route] == {"200": 1}  # p-withdrawn's only
    session_route = next(r for r in requests if r.endswith("/session"))
    assert requests[session_route] == {"200": 1, "403": 1}

    results = dict(
        query(pipeline_env, "SELECT patient_id, status FROM patient_graph.sync_results ORDER BY patient_id")
    )
    assert results == {"p-narrow": "success", "p-withdrawn": "partial"}
    assert query(pipeline_env, "SELECT count(*) FROM oura_raw.workout WHERE patient_id = 'p-narrow'") == [
        (0,)
    ]
    assert query(pipeline_env, "SELECT count(*) FROM oura_raw.session WHERE patient_id = 'p-withdrawn'") == [
        (0,)
    ]
    # The rest of their data landed, and their days are judged by it as before.
    for patient in ("p-narrow", "p-withdrawn"):
        (landed,) = query(
            pipeline_env,
            "SELECT count(*) FROM patient_graph.wearable_data WHERE patient_id = ?",
            [patient],
        )[0]
        assert landed > 0
    connections = dict(
        query(pipeline_env, "SELECT patient_id, status FROM patient_graph.wearable_connections ORDER BY 1")
    )
    assert connections == {"p-narrow": "active", "p-withdrawn": "active"}
