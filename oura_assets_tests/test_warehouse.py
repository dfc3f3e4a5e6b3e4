"""The warehouse: the contract's tables, every read and write, idempotence, and the cross-process lock."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from oura_assets import warehouse as wh
from oura_assets.normalize import DailyStatsRow, WearableRow, heart_rate_day_stats
from oura_assets_tests.support import query, snapshot

D = date(2024, 6, 10)
T0 = datetime(2024, 6, 10, tzinfo=UTC)
NOW = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)
TZ = "TIMESTAMP WITH TIME ZONE"
SPAWN = multiprocessing.get_context("spawn")
# The columns a rewrite of the same data stamps afresh (the other time columns must not move).
STAMPED_BY_THE_WRITE = frozenset({"fetched_at", "synced_at", "updated_at"})

CONTRACT_COLUMNS: dict[str, dict[str, str]] = {
    "patient_graph.wearable_data": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "metric_type": "VARCHAR",
        "day": "DATE",
        "metrics": "JSON",
        "synced_at": TZ,
    },
    "patient_graph.patient_wearable_daily_stats": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "day": "DATE",
        **dict.fromkeys(
            [
                "readiness_score",
                "sleep_score",
                "activity_score",
                "total_sleep_seconds",
                "steps",
                "active_calories",
                "total_calories",
                "resting_heart_rate",
                "hr_min",
                "hr_max",
                "hr_samples",
                "utc_offset_minutes",
            ],
            "INTEGER",
        ),
        "average_hrv": "DOUBLE",
        "hr_avg": "DOUBLE",
        "updated_at": TZ,
        "spo2_average_pct": "DOUBLE",
        "breathing_disturbance_index": "INTEGER",
        "stress_high_seconds": "INTEGER",
        "recovery_high_seconds": "INTEGER",
        "resilience_level": "VARCHAR",
        "vascular_age_years": "INTEGER",
    },
    "patient_graph.patient_events": {
        "event_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "event_type": "VARCHAR",
        "source": "VARCHAR",
        "occurred_at": TZ,
        "payload": "JSON",
    },
    "patient_graph.wearable_connections": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "status": "VARCHAR",
        "oura_user_id": "VARCHAR",
        "scopes": "VARCHAR[]",
        "access_token_enc": "VARCHAR",
        "refresh_token_enc": "VARCHAR",
        "expires_at": TZ,
        "connected_at": TZ,
        "last_synced_at": TZ,
        "last_error": "VARCHAR",
        "updated_at": TZ,
    },
    "patient_graph.sync_requests": {
        "sync_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "start_day": "DATE",
        "end_day": "DATE",
        "status": "VARCHAR",
        "requested_at": TZ,
        "run_id": "VARCHAR",
        "started_at": TZ,
        "finished_at": TZ,
        "result": "JSON",
    },
    "patient_graph.sync_results": {
        "run_id": "VARCHAR",
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "status": "VARCHAR",
        "start_day": "DATE",
        "end_day": "DATE",
        "rows": "JSON",
        "errors": "JSON",
        "recorded_at": TZ,
        "documents": "JSON",
    },
    "patient_graph.oauth_states": {
        "state_hash": "VARCHAR",
        "patient_id": "VARCHAR",
        "created_at": TZ,
        "expires_at": TZ,
        "used_at": TZ,
    },
    **{
        f"oura_raw.{c}": {
            "patient_id": "VARCHAR",
            "id": "VARCHAR",
            "day": "DATE",
            "document": "JSON",
            "fetched_at": TZ,
            "first_seen_at": TZ,
            "last_changed_at": TZ,
            "revision": "INTEGER",
        }
        for c in wh.DOCUMENT_COLLECTIONS
    },
    "oura_raw.document_revisions": {
        "collection": "VARCHAR",
        "patient_id": "VARCHAR",
        "id": "VARCHAR",
        "revision": "INTEGER",
        "day": "DATE",
        "document": "JSON",
        "fetched_at": TZ,
        "superseded_at": TZ,
        "change": "VARCHAR",
    },
    "patient_graph.wearable_day_status": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "day": "DATE",
        "status": "VARCHAR",
        "reason": "VARCHAR",
        "updated_at": TZ,
    },
    "patient_graph.webhook_events": {
        "event_key": "VARCHAR",
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "event_type": "VARCHAR",
        "data_type": "VARCHAR",
        "object_id": "VARCHAR",
        "event_time": TZ,
        "received_at": TZ,
        "start_day": "DATE",
        "end_day": "DATE",
        "sync_id": "VARCHAR",
        "action": "VARCHAR",
        "redeliveries": "INTEGER",
    },
    "oura_raw.heartrate": {
        "patient_id": "VARCHAR",
        "timestamp": TZ,
        "source": "VARCHAR",
        "bpm": "INTEGER",
        "document": "JSON",
        "fetched_at": TZ,
    },
    "patient_graph.audit_log": {
        "audit_id": "VARCHAR",
        "occurred_at": TZ,
        "actor": "VARCHAR",
        "action": "VARCHAR",
        "patient_id": "VARCHAR",
        "outcome": "VARCHAR",
        "status_code": "INTEGER",
        "client_address": "VARCHAR",
        "request_id": "VARCHAR",
        "detail": "JSON",
    },
    "patient_graph.retention_horizons": {
        "table_name": "VARCHAR",
        "cutoff": TZ,
        "rows_deleted": "BIGINT",
        "applied_at": TZ,
    },
    # CONTRACT §5: one row per Oura document, start and end in UTC, type / activity and the figures.
    "patient_graph.wearable_workouts": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "id": "VARCHAR",
        "day": "DATE",
        "start_at": TZ,
        "end_at": TZ,
        "activity": "VARCHAR",
        "intensity": "VARCHAR",
        "calories_kcal": "DOUBLE",
        "distance_m": "DOUBLE",
        "synced_at": TZ,
    },
    "patient_graph.wearable_sessions": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "id": "VARCHAR",
        "day": "DATE",
        "start_at": TZ,
        "end_at": TZ,
        "session_type": "VARCHAR",
        "hr_avg_bpm": "DOUBLE",
        "hrv_avg_ms": "DOUBLE",
        "synced_at": TZ,
    },
    "patient_graph.wearable_collection_status": {
        "patient_id": "VARCHAR",
        "source": "VARCHAR",
        "collection": "VARCHAR",
        "status": "VARCHAR",
        "reason": "VARCHAR",
        "updated_at": TZ,
    },
}

PRIMARY_KEYS = {
    "patient_graph.wearable_data": ["patient_id", "source", "metric_type", "day"],
    "patient_graph.patient_wearable_daily_stats": ["patient_id", "source", "day"],
    "patient_graph.patient_events": ["event_id"],
    "patient_graph.wearable_connections": ["patient_id", "source"],
    "patient_graph.sync_requests": ["sync_id"],
    "patient_graph.sync_results": ["run_id", "patient_id"],
    "patient_graph.oauth_states": ["state_hash"],
    **{f"oura_raw.{c}": ["patient_id", "id"] for c in wh.DOCUMENT_COLLECTIONS},
    # oura_raw.heartrate: keyed by (patient_id, timestamp, source) without a PRIMARY KEY (schema.py says why;
    # test_heartrate_key_is_kept_without_a_primary_key).
    "oura_raw.document_revisions": ["collection", "patient_id", "id", "revision", "superseded_at"],
    "patient_graph.wearable_day_status": ["patient_id", "source", "day"],
    "patient_graph.audit_log": ["audit_id"],
    "patient_graph.retention_horizons": ["table_name"],
    "patient_graph.webhook_events": ["event_key"],
    "patient_graph.wearable_workouts": ["patient_id", "source", "id"],
    "patient_graph.wearable_sessions": ["patient_id", "source", "id"],
    "patient_graph.wearable_collection_status": ["patient_id", "source", "collection"],
}


@pytest.fixture
def store(tmp_path: Path) -> wh.Warehouse:
    return wh.Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=20)


@pytest.fixture
def conn(store: wh.Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    with store.connect("test") as connection:
        yield connection


def doc(doc_id: str, day: date, **extra: Any) -> dict[str, Any]:
    return {"id": doc_id, "day": day.isoformat(), "score": 80, **extra}


def test_schema_has_every_contract_column_with_its_type(conn):
    found: dict[str, dict[str, str]] = {}
    for table, column, data_type in query(
        conn,
        "SELECT table_schema || '.' || table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema IN ('patient_graph', 'oura_raw')",
    ):
        found.setdefault(table, {})[column] = data_type
    for table, columns in CONTRACT_COLUMNS.items():
        assert table in found, table
        assert {c: found[table].get(c) for c in columns} == columns, table


def test_primary_keys_are_the_contract_keys(conn):
    keys = {
        f"{schema}.{table}": columns
        for schema, table, columns in query(
            conn,
            "SELECT schema_name, table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY' AND schema_name IN ('patient_graph', 'oura_raw')",
        )
    }
    assert keys == PRIMARY_KEYS


def test_primary_key_forbids_a_duplicate_row(conn):
    wh.replace_raw_documents(conn, "daily_sleep", "p1", D, D, [doc("a", D)], NOW)
    with pytest.raises(duckdb.ConstraintException):
        conn.execute(
            "INSERT INTO oura_raw.daily_sleep SELECT * FROM oura_raw.daily_sleep WHERE patient_id = 'p1'"
        )
    wh.record_event(conn, patient_id="p1", event_type="wearable_sync", payload={}, event_id="e1")
    with pytest.raises(duckdb.ConstraintException):
        conn.execute("INSERT INTO patient_graph.patient_events SELECT * FROM patient_graph.patient_events")


def _heartrate_columns(*samples: tuple[datetime, str, int]) -> pa.Table:
    return pa.table(
        {
            "timestamp": pa.array([t for t, _, _ in samples], pa.timestamp("us", tz="UTC")),
            "source": [s for _, s, _ in samples],
            "bpm": pa.array([b for _, _, b in samples], pa.int32()),
            "document": [
                json.dumps({"bpm": b, "source": s, "timestamp": t.isoformat()}) for t, s, b in samples
            ],
        }
    )


def test_heartrate_key_is_kept_without_a_primary_key(conn):
    assert not wh.primary_key_enforced(conn, "oura_raw.heartrate")
    start, end = datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC)
    first = start + timedelta(hours=1)
    samples = _heartrate_columns((first, "awake", 60), (first, "rest", 55))
    assert wh.replace_raw_heartrate_columns(conn, "p1", start, end, samples, NOW) == 2
    # A repeated (timestamp, source) in what is handed over is refused, and nothing of it lands.
    repeated = _heartrate_columns(
        (first, "awake", 61), (first + timedelta(minutes=5), "awake", 62), (first, "awake", 63)
    )
    with pytest.raises(ValueError, match="1 sample\\(s\\) repeat another's `timestamp` and `source`"):
        wh.replace_raw_heartrate_columns(conn, "p1", start, end, repeated, NOW)
    # Written again (the window held), and through the row path, each key is still held once.
    wh.replace_raw_heartrate_columns(conn, "p1", start, end, samples, NOW)
    wh.replace_raw_heartrate(
        conn, "p1", start, end, [{"timestamp": first.isoformat(), "source": "awake", "bpm": 70}], NOW
    )
    assert query(conn, "SELECT source, bpm FROM oura_raw.heartrate ORDER BY ALL") == [("awake", 70)]
    assert wh.duplicate_keys(conn, "oura_raw.heartrate").count == 0


def test_a_file_from_before_migration_7_keeps_its_heart_rate_without_the_key(store):
    store.ensure_schema()
    heartrate = wh.TABLES["oura_raw.heartrate"]
    with store.connect("test: the file as migration 6 left it") as conn:
        conn.execute("DROP TABLE oura_raw.heartrate")
        conn.execute(
            heartrate.ddl().replace("\n)", f",\n    PRIMARY KEY ({', '.join(heartrate.primary_key)})\n)")
        )
        conn.execute(
            "INSERT INTO oura_raw.heartrate VALUES "
            "('p1', ?, 'awake', 60, '{}', ?), ('p2', ?, 'rest', NULL, '{}', ?)",
            [NOW, NOW, NOW, NOW],
        )
        conn.execute("DELETE FROM main.schema_version WHERE version = 7")
        assert wh.primary_key_enforced(conn, "oura_raw.heartrate")
    store.ensure_schema()
    with store.connect("test: read") as conn:
        assert not wh.primary_key_enforced(conn, "oura_raw.heartrate")
        assert query(conn, "SELECT patient_id, source, bpm FROM oura_raw.heartrate ORDER BY ALL") == [
            ("p1", "awake", 60),
            ("p2", "rest", None),
        ]
        nullable = query(
            conn,
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'oura_raw' AND table_name = 'heartrate' ORDER BY ordinal_position",
        )
        assert nullable == [(c.name, "YES" if c.nullable else "NO") for c in heartrate.columns]
        assert query(conn, "SELECT max(version) FROM main.schema_version") == [(wh.SCHEMA_VERSION,)]


def test_ensure_schema_is_idempotent_and_versioned(store):
    store.ensure_schema()
    with store.connect("test") as conn:
        wh._migrate(conn)  # the DDL again, as a process that has not seen the file would run it
    store.ensure_schema()
    with store.connect("test") as conn:
        # Each migration recorded exactly once, the newest being the code's version.
        assert query(conn, "SELECT version FROM main.schema_version ORDER BY version") == [
            (version,) for version in range(1, wh.SCHEMA_VERSION + 1)
        ]
        (tables,) = conn.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema IN ('patient_graph', 'oura_raw')"
        ).fetchone()
    assert tables == len(CONTRACT_COLUMNS)


def test_connect_recreates_the_schema_of_a_replaced_file(store):
    store.ensure_schema()
    store.path.unlink()
    with store.connect("test") as conn:
        assert query(conn, "SELECT count(*) FROM patient_graph.wearable_data") == [(0,)]


def test_raw_documents_mirror_the_window(conn):
    first = [doc("a", D), doc("b", D + timedelta(days=1)), doc("c", D + timedelta(days=2))]
    assert wh.replace_raw_documents(conn, "daily_readiness", "p1", D, D + timedelta(days=2), first, NOW) == 3
    wh.replace_raw_documents(conn, "daily_readiness", "p2", D, D, [doc("a", D)], NOW)
    # Oura now returns b revised, no longer returns a, and c (outside the new window) is left alone.
    revised = [doc("b", D + timedelta(days=1), score=55)]
    assert (
        wh.replace_raw_documents(conn, "daily_readiness", "p1", D, D + timedelta(days=1), revised, NOW) == 1
    )
    stored = wh.read_raw_documents(
        conn, "daily_readiness", "p1", D - timedelta(days=5), D + timedelta(days=5)
    )
    assert [(d["id"], d["score"]) for d in stored] == [("b", 55), ("c", 80)]
    assert [d["id"] for d in wh.read_raw_documents(conn, "daily_readiness", "p2", D, D)] == ["a"]


def test_raw_document_outside_the_window_is_upserted_by_id(conn):
    wh.replace_raw_documents(conn, "sleep", "p1", D, D, [doc("x", D)], NOW)
    moved = doc("x", D + timedelta(days=9), score=1)
    assert wh.replace_raw_documents(
        conn, "sleep", "p1", D + timedelta(days=3), D + timedelta(days=4), [moved], NOW
    )
    assert query(conn, "SELECT id, day FROM oura_raw.sleep") == [("x", D + timedelta(days=9))]


def test_raw_document_given_twice_keeps_the_last(conn):
    written = wh.replace_raw_documents(
        conn, "daily_activity", "p1", D, D, [doc("a", D, score=1), doc("a", D, score=2)], NOW
    )
    assert written == 1
    assert [d["score"] for d in wh.read_raw_documents(conn, "daily_activity", "p1", D, D)] == [2]


def test_raw_document_keeps_nested_json_and_nulls(conn):
    original = doc(
        "a", D, contributors={"hrv_balance": None, "x": [1, 2.5]}, timestamp="2024-06-10T04:00:00+02:00"
    )
    wh.replace_raw_documents(conn, "daily_readiness", "p1", D, D, [original], NOW)
    assert wh.read_raw_documents(conn, "daily_readiness", "p1", D, D) == [original]


def test_raw_documents_reject_unknown_collection_and_missing_id(conn):
    with pytest.raises(ValueError, match="unknown Oura document collection"):
        wh.replace_raw_documents(conn, "daily_sleep; DROP TABLE x", "p1", D, D, [], NOW)
    with pytest.raises(ValueError, match="needs an `id`"):
        wh.replace_raw_documents(conn, "daily_sleep", "p1", D, D, [{"day": "2024-06-10"}], NOW)


def hr(ts: str, bpm: int = 60, source: str = "awake") -> dict[str, Any]:
    return {"bpm": bpm, "source": source, "timestamp": ts}


def test_heartrate_is_keyed_by_instant_whatever_the_offset_format(conn):
    samples = [
        hr("2024-06-10T02:00:00+02:00", 50),
        hr("2024-06-10T00:00:00Z", 51),  # the same instant: the last one wins
        hr("2024-06-10T00:00:00.000+00:00", 52, "rest"),
        hr("2024-06-10T05:30:05+0530", 53),
    ]
    assert wh.replace_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=1), samples, NOW) == 3
    frame = wh.read_raw_heartrate(conn, "p1", T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert frame.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert frame.rows() == [(T0, 51, "awake"), (T0, 52, "rest"), (T0 + timedelta(seconds=5), 53, "awake")]


def test_heartrate_mirrors_its_half_open_window(conn):
    day = [hr((T0 + timedelta(hours=h)).isoformat(), 60 + h) for h in range(48)]
    wh.replace_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=2), day, NOW)
    # Second fetch of the first day only: one sample gone, one changed; the second day is untouched.
    again = [s for s in day[:24] if s["bpm"] != 61]
    again[0] = {**again[0], "bpm": 99}
    assert wh.replace_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=1), again, NOW) == 23
    frame = wh.read_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=2))
    assert frame.height == 47
    assert frame["bpm"][0] == 99
    assert 61 not in frame["bpm"].to_list()
    assert (
        wh.read_raw_heartrate(conn, "p1", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1)).height == 1
    )


def test_heartrate_keeps_the_whole_sample_document(conn):
    wh.replace_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=1), [hr("2024-06-10T01:00:00+00:00")], NOW)
    (document,) = conn.execute("SELECT document FROM oura_raw.heartrate").fetchone()
    assert document == '{"bpm":60,"source":"awake","timestamp":"2024-06-10T01:00:00+00:00"}'


def test_heartrate_without_timestamp_is_refused_and_writes_nothing(store):
    with pytest.raises(ValueError, match="lack a `timestamp`"), store.transaction("test") as conn:
        wh.replace_raw_heartrate(
            conn, "p1", T0, T0 + timedelta(days=1), [hr("2024-06-10T01:00:00Z"), {"bpm": 1}], NOW
        )
    with store.connect("test") as conn:
        assert query(conn, "SELECT count(*) FROM oura_raw.heartrate") == [(0,)]


class CountingConnection:
    """A DuckDB connection that counts the statements sent through it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self._conn = conn
        self.statements = 0
        self.rows_bound_one_by_one = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return self._conn.execute(*args, **kwargs)

    def executemany(self, sql: str, params: Any) -> Any:
        self.statements += 1
        self.rows_bound_one_by_one += len(params)
        return self._conn.executemany(sql, params)


def test_heartrate_100k_samples_are_written_in_bulk_not_row_by_row(store):
    # Speed itself is measured in bench/ (heart-rate write); what keeps it fast is checked here: the number of
    # statements does not grow with the samples (a row-by-row insert made 100k of them).
    def write(n: int) -> tuple[int, CountingConnection]:
        samples = [hr((T0 + timedelta(seconds=5 * i)).isoformat(), 40 + i % 100) for i in range(n)]
        with store.transaction("test: bulk") as conn:
            counting = CountingConnection(conn)
            written = wh.replace_raw_heartrate(counting, "p1", T0, T0 + timedelta(days=30), samples, NOW)  # type: ignore[arg-type]
        return written, counting

    _, few = write(10)
    for _ in range(2):  # the second pass replaces every row: the re-materialize case
        written, many = write(100_000)
        assert written == 100_000
        assert many.rows_bound_one_by_one == 0
        assert many.statements <= few.statements + 3, (many.statements, few.statements)
    with store.connect("test") as conn:
        assert query(conn, "SELECT count(*) FROM oura_raw.heartrate") == [(100_000,)]


def test_patients_with_raw_data_in_a_window(conn):
    wh.replace_raw_documents(conn, "daily_sleep", "docs", D, D, [doc("a", D)], NOW)
    wh.replace_raw_heartrate(conn, "hr", T0, T0 + timedelta(days=1), [hr("2024-06-10T10:00:00Z")], NOW)
    wh.replace_raw_documents(
        conn, "daily_sleep", "later", D, D + timedelta(days=30), [doc("b", D + timedelta(days=30))], NOW
    )
    assert wh.patients_with_raw_data(conn, D, D) == ["docs", "hr"]
    assert wh.patients_with_raw_data(conn, D - timedelta(days=10), D - timedelta(days=5)) == []


def wearable(metric_type: str, day: date, **metrics: Any) -> WearableRow:
    return WearableRow(patient_id="p1", metric_type=metric_type, day=day, metrics={"score": None, **metrics})


def test_wearable_data_replaces_the_patients_window(conn):
    first = [
        wearable("readiness", D, score=80),
        wearable("sleep", D),
        wearable("sleep", D + timedelta(days=1)),
    ]
    assert wh.replace_wearable_data(conn, "p1", D, D + timedelta(days=1), first, NOW) == 3
    wh.replace_wearable_data(
        conn, "p2", D, D, [{"metric_type": "sleep", "day": D, "metrics": {"score": 1}}], NOW
    )
    second = [wearable("readiness", D, score=81)]
    assert wh.replace_wearable_data(conn, "p1", D, D, second, NOW) == 1
    assert query(
        conn,
        "SELECT patient_id, metric_type, day, metrics->>'score' "
        "FROM patient_graph.wearable_data ORDER BY ALL",
    ) == [
        ("p1", "readiness", D, "81"),
        ("p1", "sleep", D + timedelta(days=1), None),
        ("p2", "sleep", D, "1"),
    ]
    (metrics,) = conn.execute(
        "SELECT metrics FROM patient_graph.wearable_data WHERE patient_id = 'p1' LIMIT 1"
    ).fetchone()
    assert metrics.startswith('{"score":')  # JSON, null kept as a present key


def test_wearable_data_refuses_another_patients_row(conn):
    with pytest.raises(ValueError, match="p2"):
        wh.replace_wearable_data(conn, "p2", D, D, [wearable("sleep", D)], NOW)


def stats(day: date, **values: Any) -> DailyStatsRow:
    base: dict[str, Any] = dict.fromkeys(wh._DAILY_STATS_COLUMNS)
    base.update(hr_samples=0, utc_offset_minutes=120)
    base.update(values)
    return DailyStatsRow(patient_id="p1", day=day, **base)


def test_daily_stats_replace_the_window_with_typed_columns(conn):
    first = [
        stats(D, sleep_score=70, hr_min=45, hr_avg=61.25, average_hrv=33.5),
        stats(D + timedelta(days=1)),
    ]
    assert wh.replace_daily_stats(conn, "p1", D, D + timedelta(days=1), first, NOW) == 2
    assert (
        wh.replace_daily_stats(
            conn, "p1", D, D + timedelta(days=1), [stats(D, sleep_score=71, hr_min=44.0)], NOW
        )
        == 1
    )
    assert query(
        conn,
        "SELECT day, sleep_score, hr_min, hr_avg, average_hrv, utc_offset_minutes, readiness_score "
        "FROM patient_graph.patient_wearable_daily_stats",
    ) == [(D, 71, 44, None, None, 120, None)]


def write_everything(store: wh.Warehouse, fetched_at: datetime) -> None:
    with store.transaction("test: write everything") as conn:
        for collection in wh.DOCUMENT_COLLECTIONS:
            wh.replace_raw_documents(
                conn, collection, "p1", D, D + timedelta(days=1), [doc("a", D), doc("b", D)], fetched_at
            )
        samples = [hr((T0 + timedelta(minutes=m)).isoformat(), 50 + m % 7) for m in range(500)]
        wh.replace_raw_heartrate(conn, "p1", T0, T0 + timedelta(days=1), samples, fetched_at)
        wh.replace_wearable_data(conn, "p1", D, D, [wearable("sleep", D, score=3)], fetched_at)
        wh.replace_daily_stats(conn, "p1", D, D, [stats(D, hr_samples=500)], fetched_at)
        wh.record_event(
            conn,
            patient_id="p1",
            event_type="wearable_sync",
            payload={"a": 1},
            event_id="sync:r1:p1",
            occurred_at=fetched_at,
        )


def test_writing_the_same_data_twice_changes_only_timestamps(store):
    write_everything(store, NOW)
    with store.connect("test") as conn:
        before = snapshot(conn, CONTRACT_COLUMNS, drop=STAMPED_BY_THE_WRITE)
    write_everything(store, NOW + timedelta(hours=1))
    with store.connect("test") as conn:
        after = snapshot(conn, CONTRACT_COLUMNS, drop=STAMPED_BY_THE_WRITE)
        (fetched,) = conn.execute("SELECT DISTINCT fetched_at FROM oura_raw.heartrate").fetchone()
    assert after == before
    assert sum(len(v) for v in after.values()) > 500
    assert fetched == NOW + timedelta(hours=1)


def connect_p1(conn: duckdb.DuckDBPyConnection, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "oura_user_id": "oura-1",
        "scopes": ["daily", "heartrate"],
        "access_token_enc": "gAAAA-access-ciphertext",
        "refresh_token_enc": "gAAAA-refresh-ciphertext",
        "expires_at": NOW + timedelta(days=1),
        "connected_at": NOW,
    }
    wh.upsert_connection(conn, "p1", **{**values, **overrides})


def test_connection_upsert_and_read(conn):
    assert wh.get_connection(conn, "p1") is None
    connect_p1(conn)
    record = wh.get_connection(conn, "p1")
    assert record is not None
    assert (record.status, record.scopes, record.oura_user_id) == ("active", ("daily", "heartrate"), "oura-1")
    assert record.access_token_enc == "gAAAA-access-ciphertext"
    assert record.expires_at == NOW + timedelta(days=1)
    assert wh.list_connections(conn, "p1") == [record]
    assert "ciphertext" not in repr(record)
    assert "ciphertext" not in str(wh.list_connections(conn, "p1"))


def test_reconnect_replaces_tokens_reactivates_and_clears_the_error(conn):
    connect_p1(conn)
    wh.set_connection_status(conn, "p1", "reconnect_required", last_error="refresh rejected")
    assert wh.list_active_connections(conn) == []
    connect_p1(conn, oura_user_id=None, access_token_enc="new-a", refresh_token_enc="new-r")
    record = wh.get_connection(conn, "p1")
    assert (record.status, record.last_error, record.oura_user_id) == ("active", None, "oura-1")
    assert (record.access_token_enc, record.refresh_token_enc) == ("new-a", "new-r")
    assert query(conn, "SELECT count(*) FROM patient_graph.wearable_connections") == [(1,)]


def test_list_active_connections_filters_status_and_patient(conn):
    for patient in ("p1", "p2", "p3"):
        wh.upsert_connection(
            conn,
            patient,
            oura_user_id=None,
            scopes=[],
            access_token_enc="a",
            refresh_token_enc="r",
            expires_at=NOW,
            connected_at=NOW,
        )
    wh.set_connection_status(conn, "p2", "reconnect_required")
    assert [c.patient_id for c in wh.list_active_connections(conn)] == ["p1", "p3"]
    assert [c.patient_id for c in wh.list_active_connections(conn, "p3")] == ["p3"]
    assert wh.list_active_connections(conn, "p2") == []


def test_save_tokens_keeps_scopes_unless_given(conn):
    connect_p1(conn)
    assert wh.save_tokens(
        conn, "p1", access_token_enc="a2", refresh_token_enc="r2", expires_at=NOW + timedelta(hours=5)
    )
    record = wh.get_connection(conn, "p1")
    assert (record.access_token_enc, record.refresh_token_enc, record.scopes) == (
        "a2",
        "r2",
        ("daily", "heartrate"),
    )
    assert record.expires_at == NOW + timedelta(hours=5)
    wh.save_tokens(
        conn, "p1", access_token_enc="a3", refresh_token_enc="r3", expires_at=NOW, scopes=["email"]
    )
    assert wh.get_connection(conn, "p1").scopes == ("email",)


def test_disconnect_nulls_tokens_and_a_late_refresh_cannot_restore_them(conn):
    connect_p1(conn)
    assert wh.delete_tokens(conn, "p1")
    record = wh.get_connection(conn, "p1")
    assert (record.status, record.access_token_enc, record.refresh_token_enc) == ("disconnected", None, None)
    assert not wh.save_tokens(conn, "p1", access_token_enc="a", refresh_token_enc="r", expires_at=NOW)
    assert wh.get_connection(conn, "p1").refresh_token_enc is None
    assert not wh.delete_tokens(conn, "nobody")


def test_mark_synced_and_status_errors(conn):
    connect_p1(conn)
    wh.set_connection_status(conn, "p1", "active", last_error="Oura membership expired (403)")
    assert wh.mark_synced(conn, "p1", NOW + timedelta(hours=2))
    record = wh.get_connection(conn, "p1")
    assert (record.last_synced_at, record.last_error) == (NOW + timedelta(hours=2), None)
    with pytest.raises(ValueError, match="unknown connection status"):
        wh.set_connection_status(conn, "p1", "paused")


def test_record_event_is_idempotent_by_id(conn):
    first = wh.record_event(
        conn, patient_id="p1", event_type="wearable_sync", payload={"status": "success"}, event_id="e1"
    )
    again = wh.record_event(
        conn, patient_id="p1", event_type="wearable_sync", payload={"status": "failed"}, event_id="e1"
    )
    generated = wh.record_event(
        conn, patient_id="p1", event_type="wearable_connected", payload={}, occurred_at=NOW
    )
    assert first == again == "e1"
    assert len(generated) == 36 and generated != "e1"
    assert query(
        conn,
        "SELECT event_id, payload->>'status' FROM patient_graph.patient_events ORDER BY occurred_at DESC",
    ) == [
        ("e1", "success"),
        (generated, None),
    ]
    with pytest.raises(ValueError, match="unknown event type"):
        wh.record_event(conn, patient_id="p1", event_type="wearable_typo", payload={})


def test_sync_request_lifecycle(conn):
    sync_id = wh.create_sync_request(conn, patient_id="p1", start_day=D, end_day=D + timedelta(days=2))
    other = wh.create_sync_request(conn, patient_id="p2", start_day=D, end_day=D)
    assert [r.sync_id for r in wh.queued_sync_requests(conn, 10)] == [sync_id, other]
    assert [r.sync_id for r in wh.queued_sync_requests(conn, 1)] == [sync_id]
    assert wh.mark_sync_request(conn, sync_id, "running", run_id="run-1")
    running = wh.get_sync_request(conn, sync_id)
    assert (running.status, running.run_id, running.finished_at) == ("running", "run-1", None)
    assert running.started_at is not None
    assert wh.mark_sync_request(conn, sync_id, "partial", result={"errors": [{"code": "forbidden"}]})
    done = wh.get_sync_request(conn, sync_id)
    assert (done.status, done.run_id, done.result) == (
        "partial",
        "run-1",
        {"errors": [{"code": "forbidden"}]},
    )
    assert (done.start_day, done.end_day, done.started_at) == (D, D + timedelta(days=2), running.started_at)
    assert done.finished_at is not None
    assert [r.sync_id for r in wh.queued_sync_requests(conn, 10)] == [other]
    assert wh.get_sync_request(conn, "missing") is None
    assert not wh.mark_sync_request(conn, "missing", "failed")
    with pytest.raises(ValueError, match="unknown sync status"):
        wh.mark_sync_request(conn, sync_id, "done")
    with pytest.raises(ValueError, match="before it starts"):
        wh.create_sync_request(conn, patient_id="p1", start_day=D, end_day=D - timedelta(days=1))


def test_sync_results_merge_rows_and_only_get_worse(conn):
    common = {"run_id": "r1", "patient_id": "p1", "start_day": D, "end_day": D}
    wh.record_sync_result(conn, status="success", rows={"oura_raw.sleep": 3}, errors=[], **common)
    wh.record_sync_result(
        conn,
        status="partial",
        rows={"oura_raw.heartrate": 9},
        errors=[{"code": "unavailable", "message": "503"}],
        **common,
    )
    merged = wh.record_sync_result(
        conn,
        status="success",
        rows={"oura_raw.sleep": 4},
        errors=[{"code": "unavailable", "message": "503"}],
        **common,
    )
    assert merged.status == "partial"
    assert merged.rows == {"oura_raw.sleep": 4, "oura_raw.heartrate": 9}
    assert merged.errors == [{"code": "unavailable", "message": "503"}]
    assert wh.add_sync_result_rows(
        conn, run_id="r1", patient_id="p1", rows={"patient_graph.wearable_data": 7}
    )
    assert not wh.add_sync_result_rows(conn, run_id="r1", patient_id="nobody", rows={"x": 1})
    wh.record_sync_result(
        conn, run_id="r1", patient_id="p0", status="failed", start_day=D, end_day=D, rows={}, errors=[]
    )
    results = wh.sync_results_for_run(conn, "r1")
    assert [(r.patient_id, r.status) for r in results] == [("p0", "failed"), ("p1", "partial")]
    assert results[1].rows["patient_graph.wearable_data"] == 7
    assert wh.sync_results_for_run(conn, "r2") == []
    with pytest.raises(ValueError, match="unknown sync result status"):
        wh.record_sync_result(conn, status="queued", rows={}, errors=[], **common)


def test_oauth_state_is_single_use_and_expires(conn):
    wh.save_oauth_state(conn, "hash-1", "p1", NOW + timedelta(minutes=10))
    wh.save_oauth_state(conn, "hash-2", "p2", NOW + timedelta(minutes=10))
    assert wh.consume_oauth_state(conn, "hash-1", NOW) == "p1"
    assert wh.consume_oauth_state(conn, "hash-1", NOW) is None
    assert wh.consume_oauth_state(conn, "unknown", NOW) is None
    assert wh.consume_oauth_state(conn, "hash-2", NOW + timedelta(minutes=10)) is None
    assert wh.purge_oauth_states(conn, NOW + timedelta(hours=1)) == 2
    with pytest.raises(duckdb.ConstraintException):
        wh.save_oauth_state(conn, "hash-3", "p1", NOW)
        wh.save_oauth_state(conn, "hash-3", "p1", NOW)


def test_transaction_rolls_back_everything_on_error(store):
    with pytest.raises(RuntimeError, match="boom"), store.transaction("test") as conn:
        wh.record_event(conn, patient_id="p1", event_type="wearable_sync", payload={}, event_id="e1")
        raise RuntimeError("boom")
    with store.transaction("test") as conn:
        wh.record_event(conn, patient_id="p1", event_type="wearable_sync", payload={}, event_id="e2")
    with store.connect("test") as conn:
        assert query(conn, "SELECT event_id FROM patient_graph.patient_events") == [("e2",)]


def test_connection_stores_timestamps_in_utc(conn):
    wh.save_oauth_state(
        conn,
        "h",
        "p1",
        datetime(2024, 6, 10, 12, 0),
        created_at=datetime.fromisoformat("2024-06-10T14:00:00+02:00"),
    )
    assert query(conn, "SELECT created_at, expires_at FROM patient_graph.oauth_states") == [
        (datetime(2024, 6, 10, 12, tzinfo=UTC), datetime(2024, 6, 10, 12, tzinfo=UTC))
    ]


def hold_warehouse(path: str, purpose: str, ready: Any, release: Any) -> None:
    """Child process: hold the warehouse through `Warehouse.connect` until told to let go."""
    with wh.Warehouse(path).connect(purpose):
        ready.set()
        release.wait(30)


def hold_raw_duckdb(path: str, ready: Any, release: Any) -> None:
    """Child process: hold the file the way a data scientist's DuckDB CLI would, outside our lock."""
    connection = duckdb.connect(path)
    ready.set()
    release.wait(30)
    connection.close()


def write_events(path: str, worker: int, count: int) -> None:
    """Child process: `count` short transactions, each a read-modify-write of a counter and an event."""
    store = wh.Warehouse(path, lock_timeout_s=60)
    for n in range(count):
        with store.transaction(f"test worker {worker}") as conn:
            (value,) = conn.execute("SELECT n FROM main.counter").fetchone()
            conn.execute("UPDATE main.counter SET n = ?", [value + 1])
            wh.record_event(
                conn,
                patient_id=f"p{worker}",
                event_type="wearable_sync",
                payload={"n": n},
                event_id=f"{worker}:{n}",
            )


@pytest.fixture
def child() -> Iterator[Any]:
    """Start a spawned child process running `target`; it is always told to release and joined."""
    started: list[tuple[Any, Any]] = []

    def start(target: Any, *args: Any) -> Any:
        ready, release = SPAWN.Event(), SPAWN.Event()
        process = SPAWN.Process(target=target, args=(*args, ready, release))
        process.start()
        assert ready.wait(60), "child never took the warehouse"
        started.append((process, release))
        return process, release

    yield start
    for process, release in started:
        release.set()
        process.join(30)
        assert process.exitcode == 0


def test_busy_warehouse_names_the_holding_process_and_purpose(store, child):
    store.ensure_schema()
    process, _ = child(hold_warehouse, str(store.path), "dagster run 1a2b3c4d: write wearable_data")
    with pytest.raises(wh.WarehouseBusy) as caught, store.connect("api: connections", timeout_s=0.5):
        pass
    assert process.is_alive()  # it gave up while the holder still held, after waiting out its timeout
    message = str(caught.value)
    assert f"held by pid {process.pid} (dagster run 1a2b3c4d: write wearable_data) for " in message
    assert message.startswith(f"warehouse {store.path} is busy: ")
    gave_up_after = re.fullmatch(r".*; gave up after (\d+(?:\.\d)?) s", message)
    assert gave_up_after and float(gave_up_after[1]) >= 0.5, message
    assert caught.value.holder.pid == process.pid
    assert caught.value.retry_after_s > 0
    assert isinstance(caught.value, RuntimeError)


def test_waiter_gets_the_warehouse_once_the_other_process_lets_go(store, child):
    store.ensure_schema()
    _, release = child(hold_warehouse, str(store.path), "backfill")
    threading.Timer(0.5, release.set).start()
    with store.transaction("api: sync request", timeout_s=20) as conn:
        assert release.is_set()  # in only once the holder was told to let go
        wh.create_sync_request(conn, patient_id="p1", start_day=D, end_day=D)


def test_foreign_duckdb_connection_is_waited_for_then_named(store, child):
    store.ensure_schema()
    process, release = child(hold_raw_duckdb, str(store.path))
    with pytest.raises(wh.WarehouseBusy) as caught, store.connect("sensor", timeout_s=0.5):
        pass
    assert f"held by another program, not oura_assets: pid {process.pid} (" in str(caught.value)
    assert "outside oura_assets' lock" in str(caught.value)
    assert caught.value.holder.foreign
    threading.Timer(0.3, release.set).start()
    with store.connect("sensor", timeout_s=20) as conn:
        assert query(conn, "SELECT count(*) FROM patient_graph.patient_events") == [(0,)]


def test_two_threads_of_one_process_take_turns(store):
    store.ensure_schema()
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                with store.connect("thread") as conn:
                    began = time.monotonic()
                    conn.execute("SELECT 1").fetchall()
                    time.sleep(0.02)
                    spans.append((began, time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    spans.sort()
    assert len(spans) == 10
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_thread_waiting_on_another_thread_gets_warehouse_busy(store):
    store.ensure_schema()
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.connect("api: slow request"):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10)
        busy = rf"held by pid {os.getpid()} \(api: slow request\)"
        with pytest.raises(wh.WarehouseBusy, match=busy), store.connect("api: other", timeout_s=0.2):
            pass
    finally:
        leave.set()
        holder.join()


def test_nested_connect_in_one_thread_does_not_deadlock(store):
    with store.connect("outer", timeout_s=1) as outer, store.connect("inner", timeout_s=1) as inner:
        assert inner.execute("SELECT 1").fetchone() == (1,)
        assert outer.execute("SELECT 2").fetchone() == (2,)
    assert not Path(f"{store.path}.holder").exists()


def test_holder_file_records_the_holder_and_is_removed_after(store):
    before = datetime.now(UTC)
    with store.connect("demo: read summary"):
        holder = wh.WarehouseHolder.from_json(Path(f"{store.path}.holder").read_text())
        assert (holder.pid, holder.purpose) == (os.getpid(), "demo: read summary")
        assert before <= holder.since <= datetime.now(UTC)
        assert holder.held_for_s() >= 0
    assert not Path(f"{store.path}.holder").exists()


def test_warehouse_busy_survives_pickling(store):
    busy = wh.WarehouseBusy("data/w.duckdb", wh.WarehouseHolder(pid=7, purpose="x"), 1.5, 3.0)
    again = pickle.loads(pickle.dumps(busy))  # noqa: S301 (our own bytes)
    assert (str(again), again.retry_after_s, again.holder) == (str(busy), 3.0, busy.holder)


@pytest.mark.slow
def test_many_writer_processes_lose_no_write(store):
    store.ensure_schema()
    with store.connect("test") as conn:
        conn.execute("CREATE TABLE main.counter AS SELECT 0 AS n")
    workers = [SPAWN.Process(target=write_events, args=(str(store.path), w, 50)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    with store.connect("test") as conn:
        assert query(conn, "SELECT n FROM main.counter") == [(200,)]
        assert query(conn, "SELECT count(DISTINCT event_id) FROM patient_graph.patient_events") == [(200,)]


def test_raw_window_with_no_documents_left_is_emptied(conn):
    wh.replace_raw_documents(
        conn, "daily_sleep", "p1", D, D + timedelta(days=1), [doc("a", D), doc("b", D)], NOW
    )
    assert wh.replace_raw_documents(conn, "daily_sleep", "p1", D, D + timedelta(days=1), [], NOW) == 0
    assert wh.read_raw_documents(conn, "daily_sleep", "p1", D, D + timedelta(days=1)) == []


def test_writes_refuse_a_reversed_window_or_a_bad_day(conn):
    with pytest.raises(ValueError, match="before it starts"):
        wh.replace_wearable_data(conn, "p1", D, D - timedelta(days=1), [], NOW)
    with pytest.raises(ValueError, match="before it starts"):
        wh.replace_raw_heartrate(conn, "p1", T0, T0 - timedelta(hours=1), [], NOW)
    with pytest.raises(ValueError, match="is not a date"):
        wh.replace_raw_documents(conn, "sleep", "p1", D, D, [{"id": "x", "day": "10/06/2024"}], NOW)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every `time.sleep` in this process from here on (the lock's polls and step-asides all sleep)."""
    slept: list[float] = []
    real_sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", counting_sleep)
    return slept


def test_zero_timeout_fails_at_once_when_busy(store, child, sleeps):
    store.ensure_schema()
    process, _ = child(hold_warehouse, str(store.path), "backfill")
    sleeps.clear()
    with (
        pytest.raises(wh.WarehouseBusy, match=f"held by pid {process.pid} "),
        store.connect("api", timeout_s=0),
    ):
        pass
    assert sleeps == []  # not one poll: it gave up on the first look


def test_a_killed_holder_does_not_keep_the_warehouse(store):
    store.ensure_schema()
    ready, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=hold_warehouse, args=(str(store.path), "doomed run", ready, release))
    process.start()
    assert ready.wait(60)
    process.kill()
    process.join(30)
    assert Path(f"{store.path}.holder").exists()  # left behind by the killed process
    with store.transaction("after the crash", timeout_s=5) as conn:
        wh.record_event(conn, patient_id="p1", event_type="wearable_sync", payload={})
        holder = wh.WarehouseHolder.from_json(Path(f"{store.path}.holder").read_text())
    assert (holder.pid, holder.purpose) == (os.getpid(), "after the crash")


def test_an_unopenable_file_fails_at_once_not_as_busy(tmp_path, sleeps):
    (tmp_path / "not-a-db").write_text(
        "this is not a DuckDB file, and it is long enough to have a header " * 100
    )
    with (
        pytest.raises(duckdb.Error) as caught,
        wh.Warehouse(tmp_path / "not-a-db").connect("test", timeout_s=10),
    ):
        pass
    assert not isinstance(caught.value, wh.WarehouseBusy)
    assert sleeps == []  # not retried as if the file were busy


# A waiting request may see the writer finish the turn it is in and perhaps one more before it steps aside;
# an unfair lock lets a back-to-back writer take turn after turn (one every ~10 ms) until the request's
# timeout. Counted in the writer's turns, not in seconds, so a loaded machine slows both sides alike.
MAX_WRITER_TURNS_PER_WAIT = 5


def hog_warehouse(path: str, turns: Any, ready: Any, release: Any) -> None:
    """Child process: back-to-back short transactions (a run writing patient after patient) until told,
    counting them in `turns`."""
    store = wh.Warehouse(path)
    ready.set()
    while not release.is_set():
        with store.transaction("dagster run: write patient after patient") as conn:
            conn.execute("SELECT 1").fetchall()
            time.sleep(0.01)
        with turns.get_lock():
            turns.value += 1


def writer_turns_while_five_requests_wait(store: wh.Warehouse, turns: Callable[[], int]) -> list[int]:
    """For five requests in a row, how many turns the other writer took while each one waited."""
    taken = []
    for _ in range(5):
        before = turns()
        # The timeout only ends a test that would otherwise hang: what is asserted is the turns count.
        with store.connect("api: request", timeout_s=60):
            taken.append(turns() - before)
        time.sleep(0.05)
    return taken


def test_a_back_to_back_writer_process_does_not_starve_a_waiting_request(store, child):
    store.ensure_schema()
    turns = SPAWN.Value("i", 0)
    child(hog_warehouse, str(store.path), turns)
    taken = writer_turns_while_five_requests_wait(store, lambda: turns.value)
    assert max(taken) <= MAX_WRITER_TURNS_PER_WAIT, taken
    assert turns.value > 0  # the writer did write throughout


def test_a_back_to_back_writer_thread_leaves_room_for_another_thread(store):
    store.ensure_schema()
    stop = threading.Event()
    turns = [0]

    def hog() -> None:
        while not stop.is_set():
            with store.transaction("sensor: write"):
                time.sleep(0.01)
            turns[0] += 1

    writer = threading.Thread(target=hog)
    writer.start()
    try:
        while turns[0] < 3:  # the writer is at it before the requests come
            time.sleep(0.01)
        taken = writer_turns_while_five_requests_wait(store, lambda: turns[0])
    finally:
        stop.set()
        writer.join()
    assert max(taken) <= MAX_WRITER_TURNS_PER_WAIT, taken


def hog_warehouse_from_threads(path: str, turns: Any, ready: Any, release: Any) -> None:
    """Child process: four threads at back-to-back transactions (an API under load) until told, counting
    them in `turns`."""
    store = wh.Warehouse(path)

    def hog() -> None:
        while not release.is_set():
            with store.transaction("api: request under load") as conn:
                conn.execute("SELECT 1").fetchall()
                time.sleep(0.01)
            with turns.get_lock():
                turns.value += 1

    threads = [threading.Thread(target=hog) for _ in range(4)]
    for thread in threads:
        thread.start()
    ready.set()
    for thread in threads:
        thread.join()


def test_a_process_whose_threads_queue_back_to_back_does_not_starve_another_process(store, child):
    # Threads queued inside one process used to hand the file lock straight to each other, so a run in
    # another process waited for a gap in the API's traffic that never came.
    store.ensure_schema()
    turns = SPAWN.Value("i", 0)
    child(hog_warehouse_from_threads, str(store.path), turns)
    taken = writer_turns_while_five_requests_wait(store, lambda: turns.value)
    assert max(taken) <= MAX_WRITER_TURNS_PER_WAIT, taken


def test_daily_stats_store_hr_avg_at_full_precision_not_rounded(conn):
    # Samples 60, 61, 61: the mean is 60.666..., which rounding to 0.1 bpm in storage would turn into 60.7
    # and bias every average of averages taken from the table (issue 8).
    hr = heart_rate_day_stats(
        [
            {"timestamp": "2024-06-10T10:00:00Z", "bpm": 60, "source": "awake"},
            {"timestamp": "2024-06-10T10:05:00Z", "bpm": 61, "source": "awake"},
            {"timestamp": "2024-06-10T10:10:00Z", "bpm": 61, "source": "awake"},
        ],
        {},
        [D],
    )[D]
    row = stats(D, hr_min=hr.hr_min, hr_max=hr.hr_max, hr_avg=hr.hr_avg, hr_samples=hr.hr_samples)
    assert wh.replace_daily_stats(conn, "p1", D, D, [row], NOW) == 1
    assert query(conn, "SELECT hr_avg, hr_samples FROM patient_graph.patient_wearable_daily_stats") == [
        (182 / 3, 3)
    ]
