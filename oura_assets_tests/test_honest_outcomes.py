"""Honest outcomes: an Oura outage is never a green run, a partial one fails a check and says so in the run's
tags, a heart-rate fetch failure is not a day without heart rate, and transient faults never cost data.

Runs go through Dagster against the simulator over real HTTP on loopback; the refetch passes and the
outcome rule are also tested as plain functions."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import dagster as dg
import pytest

from oura_assets import warehouse as wh
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.partitions import (
    PATIENTS_FAILED_TAG,
    PATIENTS_OK_TAG,
    PATIENTS_PARTIAL_TAG,
    partition_range_tags,
)
from oura_assets.oura.client import DocumentBatch, OuraClient, OuraRateLimited, OuraUnavailable
from oura_assets.oura.heartrate_pages import HeartRateColumns, columns_of_samples
from oura_assets.rebuild import keep_earlier_heart_rate, rebuild_per_patient, write_daily_stats
from oura_assets.simulator import SimulatorServer
from oura_assets.sync import RefetchPolicy, sync_patient
from oura_assets.sync_errors import SyncError
from oura_assets.sync_outcome import PatientSyncResult, RunOutcome
from oura_assets_tests.support import UNPACED_RATE_LIMIT

START, END = date(2024, 6, 10), date(2024, 6, 16)
DAY = date(2024, 6, 12)
# Quick retries and cool-downs: the faults below are meant to be final or to pass within seconds. What a run
# makes of the faults is the subject here, not how long it waits between tries, nor pacing (support.UNPACED).
FAST = {
    "max_attempts": 2,
    "retry_backoff_s": 0.01,
    "refetch_cool_down_s": 0.1,
    "rate_limit": UNPACED_RATE_LIMIT,
}


def sync_run(
    oura_config: dict[str, Any] | None = None, start: date = START, end: date = END
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    result = (
        load_defs()
        .resolve_job_def("oura_sync")
        .execute_in_process(
            instance=instance,
            tags=partition_range_tags(start, end),
            run_config={"resources": {"oura": {"config": oura_config or {}}}},
            raise_on_error=False,
        )
    )
    return result, instance


def run_tags(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> dict[str, str]:
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    tags = run.tags
    return {tag: tags.get(tag, "") for tag in (PATIENTS_OK_TAG, PATIENTS_FAILED_TAG, PATIENTS_PARTIAL_TAG)}


def results(settings, run_id: str) -> dict[str, tuple[str, list[tuple[str, str | None]]]]:
    with wh.Warehouse(settings.warehouse_path).connect("test: results") as conn:
        found = wh.sync_results_for_run(conn, run_id)
    return {r.patient_id: (r.status, [(e["code"], e["collection"]) for e in r.errors]) for r in found}


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """The text of every failure event of a run: event messages, error messages and their causes."""
    texts = []
    for event in result.all_events:
        if not event.is_failure:
            continue
        texts.append(event.message or "")
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            texts.append(error.to_string())
            error = error.cause
    return texts


def oura_down_from(simulator: SimulatorServer, collection_call: str, callers: int, monkeypatch) -> None:
    """Oura goes down (every answer a 5xx) once `callers` patients reached their `collection_call` fetch:
    the outage hits mid-run, after the earlier collections landed."""
    down = threading.Barrier(callers, action=lambda: simulator.control.set_faults(error_rate=1.0), timeout=60)
    original = getattr(OuraClient, collection_call)

    def wait_for_the_outage(self: OuraClient, *args: Any, **kwargs: Any) -> Any:
        if not simulator.control.faults()["error_rate"]:
            down.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OuraClient, collection_call, wait_for_the_outage)


@pytest.mark.parametrize("when", ["mid-run", "from-the-start"])
def test_oura_outage_for_every_patient_fails_the_run_with_tags(
    pipeline_env, connect_patient, simulator, monkeypatch, when
):
    for patient in ("patient-a", "patient-b"):
        connect_patient(patient)
    if when == "mid-run":
        oura_down_from(simulator, "heartrate_columns", 2, monkeypatch)
    else:
        simulator.control.set_faults(error_rate=1.0)
    result, instance = sync_run({**FAST, "max_concurrent_patients": 2})

    assert not result.success
    recorded = results(pipeline_env, result.run_id)
    if when == "mid-run":
        # The case: every patient partial (heart rate lost), which used to be a green run.
        assert recorded == {
            p: ("partial", [("oura_unavailable", "heartrate")]) for p in ("patient-a", "patient-b")
        }
        assert run_tags(result, instance) == {
            PATIENTS_OK_TAG: "2",
            PATIENTS_FAILED_TAG: "0",
            PATIENTS_PARTIAL_TAG: "2",
        }
        assert any("Oura was unavailable for all 2 patient(s)" in m for m in failure_messages(result))
    else:
        assert {status for status, _ in recorded.values()} == {"failed"}
        assert run_tags(result, instance) == {
            PATIENTS_OK_TAG: "0",
            PATIENTS_FAILED_TAG: "2",
            PATIENTS_PARTIAL_TAG: "0",
        }
        assert any("all 2 patient(s) failed" in m for m in failure_messages(result))


def test_partial_oura_outage_tags_the_run_partial_and_fails_the_availability_check(
    pipeline_env, connect_patient, simulator, monkeypatch
):
    for patient in ("patient-a", "patient-b"):
        connect_patient(patient)
    # One patient at a time: patient-a lands everything, then Oura goes down during patient-b's heart rate.
    plain = OuraClient.heartrate_columns  # the heart-rate fetch the sync makes
    calls = {"heartrate": 0}

    def outage_on_second_call(self: OuraClient, *args: Any, **kwargs: Any) -> Any:
        calls["heartrate"] += 1
        if calls["heartrate"] == 2:
            simulator.control.set_faults(error_rate=1.0)
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(OuraClient, "heartrate_columns", outage_on_second_call)
    result, instance = sync_run({**FAST, "max_concurrent_patients": 1})

    assert result.success, failure_messages(result)
    assert results(pipeline_env, result.run_id) == {
        "patient-a": ("success", []),
        "patient-b": ("partial", [("oura_unavailable", "heartrate")]),
    }
    assert run_tags(result, instance) == {
        PATIENTS_OK_TAG: "2",
        PATIENTS_FAILED_TAG: "0",
        PATIENTS_PARTIAL_TAG: "1",
    }
    checks = {
        (e.asset_key.path[-1], e.check_name): e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "oura_available"
    }
    assert {name: e.passed for (name, _), e in checks.items()} == {
        "daily_readiness": True,
        "sleep": True,
        "daily_activity": True,
        "workout": True,
        "session": True,
        "daily_spo2": True,
        "daily_stress": True,
        "daily_resilience": True,
        "daily_cardiovascular_age": True,
        "heartrate": False,
    }
    failing = checks[("heartrate", "oura_available")]
    assert failing.severity == dg.AssetCheckSeverity.ERROR
    assert failing.metadata["patients_lost_to_oura"].value == 1
    assert list(failing.metadata["details"].value) == ["patient-b"]


def test_heart_rate_fetch_failing_keeps_the_earlier_heart_rate_figures(pipeline_env, connect_patient):
    connect_patient("patient-a")
    first, _ = sync_run({"rate_limit": UNPACED_RATE_LIMIT}, start=DAY, end=DAY + timedelta(days=2))
    assert first.success
    store = wh.Warehouse(pipeline_env.warehouse_path)
    hr_sql = (
        "SELECT day, hr_min, hr_max, hr_avg, hr_samples FROM patient_graph.patient_wearable_daily_stats "
        "WHERE patient_id = 'patient-a' ORDER BY day"
    )
    with store.connect("test: hr before") as conn:
        before = conn.execute(hr_sql).fetchall()
    assert before and all(samples > 0 for *_, samples in before)

    def rebuild_after(run_id: str, heart_rate_failed: bool) -> list[tuple]:
        with store.transaction("test: the run's result, raw heart rate gone") as conn:
            # The raw samples behind the stored figures are gone; only the stored figures remain.
            conn.execute("DELETE FROM oura_raw.heartrate WHERE patient_id = 'patient-a'")
            errors = [SyncError("oura_unavailable", "GET heartrate answered 503", "heartrate").to_dict()]
            wh.record_sync_result(
                conn,
                run_id=run_id,
                patient_id="patient-a",
                status="partial" if heart_rate_failed else "success",
                start_day=DAY,
                end_day=DAY + timedelta(days=2),
                rows={},
                errors=errors if heart_rate_failed else [],
            )
        rebuild_per_patient(
            warehouse=store,
            table="patient_graph.patient_wearable_daily_stats",
            write=write_daily_stats,
            start=DAY,
            end=DAY + timedelta(days=2),
            run_id=run_id,
            margin=timedelta(days=31),
        )
        with store.connect("test: hr after") as conn:
            return conn.execute(hr_sql).fetchall()

    assert rebuild_after("run-heart-rate-failed", heart_rate_failed=True) == before
    # The control: when heart rate was fetched (and Oura had none), the figures do go.
    assert all(
        samples == 0 for *_, samples in rebuild_after("run-heart-rate-fetched", heart_rate_failed=False)
    )


def test_keep_earlier_heart_rate_prefers_stored_figures_and_fills_nothing_else():
    from oura_assets.normalize import HeartRateDayStats

    computed = {
        DAY: HeartRateDayStats(50, 90, 70.0, 10, timedelta(hours=2)),
        DAY + timedelta(days=1): HeartRateDayStats(55, 95, 71.0, 12, timedelta(hours=2)),
    }
    earlier = {DAY: wh.DailyHeartRate(48, 120, 66.5, 300, 120)}
    merged, kept = keep_earlier_heart_rate(computed, earlier)
    assert kept == [DAY]
    assert merged[DAY] == HeartRateDayStats(48, 120, 66.5, 300, timedelta(hours=2))
    assert merged[DAY + timedelta(days=1)] == computed[DAY + timedelta(days=1)]


class FlakyClient:
    """Fails each collection's first `failures[collection]` calls with the given error, then answers."""

    def __init__(self, failures: dict[str, list[Exception]]):
        self.failures = {c: list(errors) for c, errors in failures.items()}
        self.calls: dict[str, int] = {}

    def _call(self, collection: str) -> None:
        self.calls[collection] = self.calls.get(collection, 0) + 1
        if self.failures.get(collection):
            raise self.failures[collection].pop(0)

    def documents(self, collection: str, start: date, end: date) -> DocumentBatch:
        self._call(collection)
        return DocumentBatch([{"id": f"{collection}-1", "day": DAY.isoformat(), "score": 80}], [])

    def heartrate(self, start, end) -> list[dict]:
        self._call("heartrate")
        return [{"timestamp": "2024-06-12T10:00:00+00:00", "bpm": 60, "source": "awake"}]

    def heartrate_columns(self, start, end) -> HeartRateColumns:
        return columns_of_samples(self.heartrate(start, end), start, end)


@pytest.fixture
def store(tmp_path) -> wh.Warehouse:
    warehouse = wh.Warehouse(tmp_path / "w.duckdb")
    warehouse.ensure_schema()
    return warehouse


def sync_flaky(store: wh.Warehouse, client: FlakyClient, waits: list[float], passes: int = 2):
    refetch = RefetchPolicy(passes=passes, cool_down_s=5.0, max_cool_down_s=60.0, sleep=waits.append)
    return sync_patient(patient_id="p1", client=client, warehouse=store, start=DAY, end=DAY, refetch=refetch)


@pytest.mark.parametrize(
    ("errors", "waits"),
    [
        ([OuraUnavailable("503 five times", status=503)], [5.0]),
        ([OuraRateLimited("429 beyond the wait", retry_after_s=12.0)], [12.0]),
        ([OuraRateLimited("429 asking for an hour", retry_after_s=3600.0)], [60.0]),
        ([OuraUnavailable("dropped"), OuraRateLimited("429", retry_after_s=2.0)], [5.0, 2.0]),
    ],
    ids=["5xx-default-cool-down", "429-retry-after", "429-retry-after-capped", "5xx-then-429"],
)
def test_transient_fault_outlasting_the_retries_is_fetched_again_after_a_cool_down(store, errors, waits):
    client = FlakyClient({"daily_readiness": errors})
    asked: list[float] = []
    result = sync_flaky(store, client, asked)
    assert result.status == "success" and result.errors == []
    assert asked == waits
    assert client.calls["daily_readiness"] == len(errors) + 1
    # Only the collection that failed is fetched again.
    assert client.calls["heartrate"] == 1 and client.calls["sleep"] == 1
    with store.connect("test") as conn:
        assert conn.execute("SELECT count(*) FROM oura_raw.daily_readiness").fetchone() == (1,)


def test_fault_outlasting_every_refetch_pass_leaves_the_patient_partial(store):
    client = FlakyClient({"heartrate": [OuraUnavailable("503", status=503)] * 5})
    asked: list[float] = []
    result = sync_flaky(store, client, asked)
    assert result.status == "partial"
    assert [(e.code, e.collection) for e in result.errors] == [("oura_unavailable", "heartrate")]
    assert client.calls["heartrate"] == 3 and asked == [5.0, 5.0]


def test_no_refetch_for_faults_another_pass_cannot_fix(store):
    from oura_assets.oura.client import OuraForbidden, OuraPayloadError

    client = FlakyClient(
        {"heartrate": [OuraForbidden("scope", status=403)], "sleep": [OuraPayloadError("bad")]}
    )
    asked: list[float] = []
    result = sync_flaky(store, client, asked)
    assert result.status == "partial" and asked == []
    assert client.calls["heartrate"] == 1 and client.calls["sleep"] == 1


def patient(patient_id: str, status: str, *codes: str) -> PatientSyncResult:
    return PatientSyncResult(patient_id, status, {}, [SyncError(code, "m", "heartrate") for code in codes])


@pytest.mark.parametrize(
    ("patients", "fails"),
    [
        ([], False),
        ([patient("a", "success"), patient("b", "partial", "oura_unavailable")], False),
        ([patient("a", "partial", "oura_unavailable"), patient("b", "partial", "rate_limited")], True),
        ([patient("a", "partial", "oura_unavailable"), patient("b", "failed", "oura_unavailable")], True),
        ([patient("a", "failed", "reconnect_required"), patient("b", "partial", "oura_unavailable")], True),
        (
            [patient("a", "failed", "reconnect_required"), patient("b", "failed", "subscription_expired")],
            False,
        ),
        ([patient("a", "partial", "rejected_document"), patient("b", "failed", "oura_unavailable")], False),
        ([patient("a", "partial", "forbidden"), patient("b", "partial", "oura_unavailable")], False),
        ([patient("a", "failed", "warehouse_busy")], True),
    ],
    ids=[
        "no-patients",
        "one-patient-served-fully",
        "every-patient-partial-for-oura",
        "partial-and-failed-for-oura",
        "patient-side-aside-the-rest-lost-to-oura",
        "every-patient-patient-side",
        "one-partial-for-a-bad-document",
        "one-partial-for-a-scope-not-granted",
        "warehouse-busy",
    ],
)
def test_run_outcome_rule(patients, fails):
    assert (RunOutcome(patients).failure is not None) == fails
