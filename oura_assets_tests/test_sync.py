"""One patient's sync, without Dagster or HTTP: how each kind of failure is classified and what lands."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime

import pytest

from oura_assets import warehouse as wh
from oura_assets.oura.client import (
    DocumentBatch,
    OuraForbidden,
    OuraPayloadError,
    OuraRateLimited,
    OuraUnavailable,
    RejectedDocument,
)
from oura_assets.oura.heartrate_pages import HeartRateColumns, columns_of_samples
from oura_assets.sync import ALL_COLLECTIONS, RefetchPolicy, heartrate_window, sync_patient
from oura_assets.sync_errors import screen_samples
from oura_assets.tokens import ReconnectRequired

DAY = date(2024, 6, 12)


def document(collection: str, n: int = 0) -> dict:
    return {
        "id": f"{collection}-{n}",
        "day": DAY.isoformat(),
        "score": 80,
        "timestamp": "2024-06-12T00:00:00+02:00",
    }


def sample(minute: int, bpm: object = 60, source: object = "awake") -> dict:
    return {"timestamp": f"2024-06-12T10:{minute:02d}:00+00:00", "bpm": bpm, "source": source}


class FakeClient:
    """Answers like OuraClient; `failures` maps a collection to the exception it raises."""

    def __init__(self, failures: dict | None = None, samples: list | None = None, rejected: int = 0):
        self.failures = failures or {}
        self.samples = samples if samples is not None else [sample(0), sample(5)]
        self.rejected = rejected

    def _maybe_fail(self, collection: str) -> None:
        if collection in self.failures:
            raise self.failures[collection]

    def documents(self, collection: str, start: date, end: date) -> DocumentBatch:
        self._maybe_fail(collection)
        bad = [RejectedDocument("no `id`", {"day": DAY.isoformat()}) for _ in range(self.rejected)]
        return DocumentBatch([document(collection)], bad)

    def heartrate(self, start: datetime, end: datetime) -> list[dict]:
        self._maybe_fail("heartrate")
        return self.samples

    def heartrate_columns(self, start: datetime, end: datetime) -> HeartRateColumns:
        # What OuraClient.heartrate_columns makes of the pages: the same parse, windowing and screen flags.
        return columns_of_samples(self.heartrate(start, end), start, end)


@pytest.fixture
def store(tmp_path) -> wh.Warehouse:
    warehouse = wh.Warehouse(tmp_path / "w.duckdb")
    warehouse.ensure_schema()
    return warehouse


# Refetch passes without the cool-down's real wait; the waits asked for are kept for the tests on them.
COOL_DOWNS: list[float] = []
NO_WAIT = RefetchPolicy(sleep=COOL_DOWNS.append)


def run(store: wh.Warehouse, client: FakeClient, refetch: RefetchPolicy = NO_WAIT):
    return sync_patient(patient_id="p1", client=client, warehouse=store, start=DAY, end=DAY, refetch=refetch)


def count(store: wh.Warehouse, table: str) -> int:
    with store.connect("test") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


def test_all_collections_land_and_the_patient_succeeds(store):
    result = run(store, FakeClient())
    assert result.status == "success" and result.errors == []
    assert result.rows == {f"oura_raw.{c}": (2 if c == "heartrate" else 1) for c in ALL_COLLECTIONS}
    assert count(store, "oura_raw.sleep") == 1 and count(store, "oura_raw.heartrate") == 2


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (OuraUnavailable("Oura answered 503 five times", status=503), "oura_unavailable"),
        (OuraRateLimited("429 beyond the wait budget"), "rate_limited"),
        (OuraPayloadError("`data` was not a list"), "bad_payload"),
    ],
    ids=["5xx", "429", "bad-payload"],
)
def test_one_collection_failing_makes_the_patient_partial(store, failure, code):
    result = run(store, FakeClient({"heartrate": failure}))
    assert result.status == "partial"
    assert [(e.code, e.collection) for e in result.errors] == [(code, "heartrate")]
    assert count(store, "oura_raw.daily_readiness") == 1 and count(store, "oura_raw.heartrate") == 0


def test_a_lone_403_with_the_grant_unknown_skips_that_collection_as_a_scope_not_granted(store):
    """Issue 11: a missing scope (403 for one collection) skips that collection with a reason, never the
    patient. With the connection's scopes unknown, a lone 403 on a scoped collection is read that way."""
    result = run(store, FakeClient({"heartrate": OuraForbidden("missing scope heartrate", status=403)}))
    assert result.status == "success" and result.errors == []
    status, reason = result.collections["heartrate"]
    assert status == "scope_missing" and "heartrate" in reason
    assert count(store, "oura_raw.daily_readiness") == 1 and count(store, "oura_raw.heartrate") == 0


def test_every_collection_forbidden_is_an_expired_membership(store):
    forbidden = OuraForbidden("membership expired", status=403)
    result = run(store, FakeClient(dict.fromkeys(ALL_COLLECTIONS, forbidden)))
    assert result.status == "failed" and result.patient_side
    assert [e.code for e in result.errors] == ["subscription_expired"]


def test_refresh_rejected_stops_the_patient_without_writing(store):
    result = run(store, FakeClient({"daily_readiness": ReconnectRequired("refresh token refused")}))
    assert result.status == "failed" and result.patient_side
    assert [e.code for e in result.errors] == ["reconnect_required"]
    assert count(store, "oura_raw.daily_readiness") == 0 and count(store, "oura_raw.heartrate") == 0


def test_rejected_documents_are_reported_and_the_rest_lands(store):
    result = run(store, FakeClient(rejected=1))
    assert result.status == "partial"
    assert {e.code for e in result.errors} == {"rejected_document"}
    assert count(store, "oura_raw.daily_activity") == 1


def test_bad_heart_rate_samples_are_left_out_and_reported(store):
    samples = [sample(0), sample(5, bpm="fast"), sample(10, source=None), sample(15, bpm=61.0), "junk"]
    result = run(store, FakeClient(samples=samples))
    assert result.status == "partial"
    assert result.rows["oura_raw.heartrate"] == 2
    assert "3 heart-rate sample(s) left out" in result.errors[0].message


def test_warehouse_busy_fails_the_patient_with_a_clear_error(store, monkeypatch):
    @contextlib.contextmanager
    def busy(purpose, timeout_s=None):
        raise wh.WarehouseBusy(str(store.path), None, waited_s=1.0)
        yield

    monkeypatch.setattr(store, "transaction", busy)
    result = run(store, FakeClient())
    assert result.status == "failed" and not result.patient_side
    assert result.errors[-1].code == "warehouse_busy"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (sample(0), None),
        (sample(0, bpm=72.0), None),
        (sample(0, bpm=72.5), "not a whole number"),
        (sample(0, bpm=True), "not a whole number"),
        (sample(0, bpm=None), "not a whole number"),
        (sample(0, source=None), "no `source`"),
        ({"timestamp": "yesterday", "bpm": 60, "source": "awake"}, "no readable `timestamp`"),
        ([1, 2], "not an object"),
    ],
    ids=["ok", "float-whole", "fraction", "bool", "null", "no-source", "bad-timestamp", "not-object"],
)
def test_screen_samples(value, problem):
    good, errors = screen_samples([value])
    if problem is None:
        assert good == [value] and errors == []
    else:
        assert good == [] and problem in errors[0].message


def test_heartrate_window_covers_every_utc_offset_of_the_local_days():
    low, high = heartrate_window(date(2024, 6, 10), date(2024, 6, 16))
    assert low == datetime(2024, 6, 9, tzinfo=UTC) and high == datetime(2024, 6, 18, tzinfo=UTC)
