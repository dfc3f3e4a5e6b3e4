"""Revised documents and day statuses over the real path: the simulator over HTTP on loopback, `sync_patients`
then the rebuild, a throwaway DuckDB file, and SQL on what landed. Also the migration of an older file."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import duckdb

from oura_assets import domain
from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.oura.client import OuraClient, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.rebuild import rebuild_per_patient, write_daily_stats, write_wearable_data
from oura_assets.simulator.data import plan
from oura_assets.sync import sync_patients
from oura_assets.sync_outcome import RunOutcome
from oura_assets.tokens import PatientTokens, TokenCipher
from oura_assets.warehouse.schema import SCHEMA_VERSION_TABLE, TABLES
from oura_assets.warehouse.schema_collections import WELLNESS_COLUMNS

# The simulated user `rev-ring` wears the ring on 2024-06-11, and Oura revises that day at 17:01 UTC on the
# 12th (readiness 92 -> 89); the ring stayed off on the 10th.
RING = "rev-ring"
REVISED_DAY, NOT_WORN_DAY = date(2024, 6, 11), date(2024, 6, 10)
START, END = date(2024, 6, 9), date(2024, 6, 11)
BEFORE_REVISION = datetime(2024, 6, 12, 12, 0, tzinfo=UTC)
AFTER_REVISION = datetime(2024, 6, 13, 0, 0, tzinfo=UTC)


def run(settings: Settings, patients: list[str], run_id: str) -> RunOutcome:
    """One run without Dagster: the raw sync, then both normalized tables (with day statuses)."""
    store = wh.Warehouse(settings.warehouse_path)
    oauth, cipher = OuraOAuthApp.from_settings(settings), TokenCipher(settings.token_keys)

    def client_for(patient_id: str) -> OuraClient:
        tokens = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        return OuraClient(settings.api_base_url, tokens, retry=RetryPolicy(attempts=1))

    outcome = sync_patients(
        patients=patients, client_for=client_for, warehouse=store, start=START, end=END, run_id=run_id
    )
    common = {"warehouse": store, "start": START, "end": END, "run_id": run_id}
    rebuild_per_patient(table="patient_graph.wearable_data", write=write_wearable_data, **common)
    rebuild_per_patient(
        table="patient_graph.patient_wearable_daily_stats",
        write=write_daily_stats,
        margin=timedelta(days=31),
        day_status=True,
        **common,
    )
    return outcome


def query(settings: Settings, sql: str, params: list | None = None) -> list[tuple]:
    with wh.Warehouse(settings.warehouse_path).connect("test: read") as conn:
        return conn.execute(sql, params or []).fetchall()


def test_simulated_plan_has_the_revision_this_file_relies_on():
    day = plan(RING, REVISED_DAY)
    assert day.revised_at is not None and BEFORE_REVISION < day.revised_at < AFTER_REVISION
    assert day.daily_visible_at < BEFORE_REVISION and day.activity_visible_at < BEFORE_REVISION
    assert not plan(RING, NOT_WORN_DAY).worn


def test_revised_score_reaches_wearable_data_and_the_old_version_stays_in_history(
    pipeline_env, connect_patient, simulator, warehouse_backend
):
    connect_patient("rev", RING)
    simulator.control.set_clock(BEFORE_REVISION, frozen=True)
    run(pipeline_env, ["rev"], "run-1")
    simulator.control.set_clock(AFTER_REVISION, frozen=True)
    run(pipeline_env, ["rev"], "run-2")
    # A third run with nothing new: re-fetching identical content is not a revision.
    run(pipeline_env, ["rev"], "run-3")

    score_sql = (
        "SELECT (metrics->>'score') FROM patient_graph.wearable_data "
        "WHERE patient_id = 'rev' AND metric_type = 'readiness' AND day = ?"
    )
    assert query(pipeline_env, score_sql, [REVISED_DAY]) == [("89",)]
    ((revision, first_seen, changed, fetched),) = query(
        pipeline_env,
        "SELECT revision, first_seen_at, last_changed_at, fetched_at FROM oura_raw.daily_readiness "
        "WHERE patient_id = 'rev' AND day = ?",
        [REVISED_DAY],
    )
    assert revision == 1 and first_seen < changed < fetched
    history = query(
        pipeline_env,
        "SELECT revision, (document->>'score'), change FROM oura_raw.document_revisions "
        "WHERE collection = 'daily_readiness' AND patient_id = 'rev' AND day = ?",
        [REVISED_DAY],
    )
    assert history == [(0, "92", "changed")]
    # The README's "revised scores" query shows it.
    readme_query = (
        "SELECT r.patient_id, r.day, (h.document->>'score') AS old_score, "
        "(r.document->>'score') AS new_score, h.revision AS old_revision, r.revision "
        "FROM oura_raw.daily_readiness r "
        "JOIN oura_raw.document_revisions h ON h.collection = 'daily_readiness' "
        "AND h.patient_id = r.patient_id AND h.id = r.id AND h.change = 'changed' "
        "WHERE (h.document->>'score') IS DISTINCT FROM (r.document->>'score') "
        "ORDER BY r.patient_id, r.day, h.revision"
    )
    assert query(pipeline_env, readme_query) == [("rev", REVISED_DAY, "92", "89", 0, 1)]
    documents = {
        run_id: json.loads(counts)
        for run_id, counts in query(pipeline_env, "SELECT run_id, documents FROM patient_graph.sync_results")
    }
    assert documents["run-1"]["new"] > 0 and documents["run-1"]["changed"] == 0
    assert documents["run-2"]["changed"] >= 3  # readiness, daily sleep, activity and the main period
    assert documents["run-3"] == {
        "new": 0,
        "changed": 0,
        "unchanged": documents["run-3"]["unchanged"],
        "deleted": 0,
    }
    assert documents["run-3"]["unchanged"] > 0


def test_every_synced_day_gets_a_status_with_a_reason(
    pipeline_env, connect_patient, simulator, warehouse_backend
):
    connect_patient("rev", RING)
    simulator.control.set_clock(AFTER_REVISION, frozen=True)
    run(pipeline_env, ["rev"], "run-1")

    statuses = {
        day: (status, reason)
        for day, status, reason in query(
            pipeline_env,
            "SELECT day, status, reason FROM patient_graph.wearable_day_status WHERE patient_id = 'rev'",
        )
    }
    assert set(statuses) == {START + timedelta(days=n) for n in range((END - START).days + 1)}
    assert statuses[NOT_WORN_DAY][0] == domain.DAY_NOT_WORN
    assert statuses[REVISED_DAY][0] == domain.DAY_COMPLETE
    assert all(reason for _, reason in statuses.values())
    (rows,) = query(pipeline_env, "SELECT rows FROM patient_graph.sync_results WHERE run_id = 'run-1'")[0]
    assert json.loads(rows)["patient_graph.wearable_day_status"] == 3


def test_broken_token_marks_the_days_reconnect_required_not_not_worn(
    pipeline_env, connect_patient, simulator
):
    broken = connect_patient("broken", "broken-ring")
    simulator.control.set_faults(
        users={broken.ring_user: {"expire_access_tokens": True, "refresh_reject": True}}
    )
    store = wh.Warehouse(pipeline_env.warehouse_path)
    oauth, cipher = OuraOAuthApp.from_settings(pipeline_env), TokenCipher(pipeline_env.token_keys)
    tokens = PatientTokens(
        patient_id="broken", warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=pipeline_env.lock_dir
    )
    # Only the sync: when every patient fails the normalized steps may never run, so the sync explains.
    outcome = sync_patients(
        patients=["broken"],
        client_for=lambda _: OuraClient(pipeline_env.api_base_url, tokens, retry=RetryPolicy(attempts=1)),
        warehouse=store,
        start=START,
        end=END,
        run_id="run-broken",
    )
    assert outcome.patients_failed == 1
    found = query(
        pipeline_env,
        "SELECT DISTINCT status FROM patient_graph.wearable_day_status WHERE patient_id = 'broken'",
    )
    assert found == [(domain.DAY_RECONNECT_REQUIRED,)]
    (reason,) = query(
        pipeline_env,
        "SELECT any_value(reason) FROM patient_graph.wearable_day_status WHERE patient_id = 'broken'",
    )[0]
    assert "reconnect_required" in reason


def test_an_older_file_is_migrated_and_its_documents_backfilled_as_first_versions(tmp_path):
    path = tmp_path / "old.duckdb"
    fetched = datetime(2024, 6, 1, tzinfo=UTC)
    with duckdb.connect(str(path)) as conn:
        # The file as schema version 1 left it: raw document tables without revision columns.
        conn.execute(SCHEMA_VERSION_TABLE.ddl())
        conn.execute("INSERT INTO main.schema_version VALUES (1, 'initial', now())")
        for schema in ("patient_graph", "oura_raw"):
            conn.execute(f"CREATE SCHEMA {schema}")
        # Tables and columns later migrations add (6: the newer collections, wellness daily-stats columns).
        later = {
            "oura_raw.document_revisions",
            "patient_graph.wearable_day_status",
            *(f"oura_raw.{c}" for c in (domain.WORKOUT, domain.SESSION, *domain.WELLNESS_COLLECTIONS)),
            "patient_graph.wearable_workouts",
            "patient_graph.wearable_sessions",
            "patient_graph.wearable_collection_status",
        }
        later_columns = {"first_seen_at", "last_changed_at", "revision", *(c.name for c in WELLNESS_COLUMNS)}
        for table in TABLES.values():
            if table.name in later:
                continue
            old = [c for c in table.columns if c.name not in later_columns]
            if table.name == "patient_graph.sync_results":
                old = [c for c in old if c.name != "documents"]
            columns = ", ".join(f"{c.name} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in old)
            conn.execute(
                f"CREATE TABLE {table.name} ({columns}, PRIMARY KEY ({', '.join(table.primary_key)}))"
            )
        conn.execute(
            "INSERT INTO oura_raw.daily_readiness VALUES ('p1', 'a', DATE '2024-06-01', ?, ?)",
            ['{"score": 80}', fetched],
        )

    store = wh.Warehouse(path)
    store.ensure_schema()
    with store.connect("test: read") as conn:
        assert conn.execute(
            "SELECT first_seen_at, last_changed_at, revision FROM oura_raw.daily_readiness"
        ).fetchall() == [(fetched, fetched, 0)]
        nullable = conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'oura_raw' AND table_name = 'daily_readiness' AND column_name = 'revision'"
        ).fetchall()
        assert nullable == [("revision", "NO")]
        assert conn.execute("SELECT count(*) FROM patient_graph.wearable_day_status").fetchone() == (0,)
        changes = wh.mirror_raw_documents(
            conn,
            "daily_readiness",
            "p1",
            date(2024, 6, 1),
            date(2024, 6, 1),
            [{"id": "a", "day": "2024-06-01", "score": 81}],
            datetime(2024, 6, 2, tzinfo=UTC),
        )
        assert changes == wh.DocumentChanges(changed=1)
        assert conn.execute("SELECT revision FROM oura_raw.daily_readiness").fetchall() == [(1,)]
        assert conn.execute("SELECT max(version) FROM main.schema_version").fetchone() == (wh.SCHEMA_VERSION,)
        # Migration 6: the newer collections' raw tables (with revision columns) and daily-stats columns.
        assert conn.execute("SELECT revision FROM oura_raw.workout").fetchall() == []
        assert (
            conn.execute(
                "SELECT spo2_average_pct, resilience_level FROM patient_graph.patient_wearable_daily_stats"
            ).fetchall()
            == []
        )
        statuses = conn.execute("SELECT count(*) FROM patient_graph.wearable_collection_status").fetchone()
        assert statuses == (0,)
