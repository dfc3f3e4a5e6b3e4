"""The DuckLake backend: configuration, concurrent writers without the file lock, a read-only analyst in
another process, keys kept unique without PRIMARY KEY, and maintenance. The CONTRACT §5 tables themselves
are checked on both backends by the end-to-end tests that take `warehouse_backend` (test_pipeline.py,
test_revisions_and_day_status.py, test_erasure.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from oura_assets import warehouse as wh
from oura_assets.config import ConfigError, load_settings
from oura_assets_tests.lake_worker import DAYS
from oura_assets_tests.support import duplicate_keys, query, snapshot


@pytest.fixture
def lake(lake_env: dict[str, str]) -> wh.Warehouse:
    store = wh.Warehouse(
        wh.lake_location(lake_env["OURA_ASSETS_WAREHOUSE"], lake_env["OURA_ASSETS_LAKE_DATA_PATH"])
    )
    store.ensure_schema()
    return store


def test_ducklake_location_is_selected_by_the_variables_and_needs_its_data_path(lake_env):
    settings = load_settings(lake_env)
    assert isinstance(settings.warehouse_path, wh.LakeLocation)
    assert settings.warehouse_path.data_path == lake_env["OURA_ASSETS_LAKE_DATA_PATH"]
    with pytest.raises(ConfigError, match="OURA_ASSETS_LAKE_DATA_PATH"):
        load_settings({"OURA_ASSETS_WAREHOUSE": lake_env["OURA_ASSETS_WAREHOUSE"]})
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        load_settings(
            {**lake_env, "OURA_ASSETS_WAREHOUSE": lake_env["OURA_ASSETS_WAREHOUSE"] + " password=s3"}
        )
    with pytest.raises(ConfigError, match="PostgreSQL"):
        load_settings({**lake_env, "OURA_ASSETS_WAREHOUSE": "ducklake:sqlite:catalog.db"})


def test_lake_has_every_table_at_the_current_schema_version_without_keys(lake):
    with lake.connect("test: catalog") as conn:
        assert wh.is_lake_connection(conn)
        tables = {
            f"{s}.{t}"
            for s, t in conn.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchall()
        }
        (version,) = conn.execute("SELECT max(version) FROM main.schema_version").fetchone()
    assert set(wh.TABLES) <= tables and version == wh.SCHEMA_VERSION
    lake.ensure_schema()  # a second process finding the schema there migrates nothing
    assert query(lake.lake, "SELECT count(*) FROM main.schema_version")[0][0] == wh.SCHEMA_VERSION


def test_two_transactions_inserting_one_key_conflict_and_the_retry_keeps_one_row(lake):
    """DuckLake lets two inserts commit side by side; the write guard makes them conflict instead."""
    first = lake.transaction("test: first")
    second = lake.transaction("test: second")
    a, b = first.__enter__(), second.__enter__()
    payload = {"n": 1}
    wh.record_event(a, patient_id="p", event_type="wearable_sync", payload=payload, event_id="same-id")
    wh.record_event(b, patient_id="p", event_type="wearable_sync", payload=payload, event_id="same-id")
    first.__exit__(None, None, None)
    with pytest.raises(wh.WarehouseConflict, match="lost a write conflict"):
        second.__exit__(None, None, None)
    for attempt in lake.attempts("test: again"):
        with attempt as conn:
            wh.record_event(
                conn, patient_id="p", event_type="wearable_sync", payload=payload, event_id="same-id"
            )
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.patient_events") == [(1,)]


def test_attempts_give_up_with_a_clear_error_when_conflicts_never_stop(lake, monkeypatch):
    from oura_assets.warehouse import database

    monkeypatch.setattr(database, "CONFLICT_ATTEMPTS", 2)
    monkeypatch.setattr(database, "_CONFLICT_PAUSE_S", (0.0, 0.0))
    tries = 0
    with pytest.raises(wh.WarehouseConflict, match="2 time") as raised:
        for attempt in lake.attempts("test: always loses"):
            with attempt as conn:
                tries += 1
                wh.record_event(
                    conn, patient_id="p", event_type="wearable_sync", payload={}, event_id=f"e{tries}"
                )
                # Another writer commits to the same table meanwhile, every time.
                for other in lake.attempts("test: the winner"):
                    with other as winner:
                        wh.record_event(
                            winner,
                            patient_id="q",
                            event_type="wearable_sync",
                            payload={},
                            event_id=f"w{tries}",
                        )
    assert tries == 2 and isinstance(raised.value, wh.WarehouseBusy) and raised.value.retry_after_s > 0


def test_three_writer_processes_take_turns_and_a_read_only_analyst_shares_one_lake(lake, lake_env, tmp_path):
    catalog, data_path = lake_env["OURA_ASSETS_WAREHOUSE"], lake_env["OURA_ASSETS_LAKE_DATA_PATH"]
    worker = [sys.executable, "-m", "oura_assets_tests.lake_worker"]
    stop = tmp_path / "stop"
    reader = subprocess.Popen([*worker, "read", catalog, data_path, str(stop), str(tmp_path / "reader.json")])
    transactions = 8
    writers = [
        subprocess.Popen(
            [*worker, "write", catalog, data_path, str(n), str(transactions), str(tmp_path / f"w{n}.json")]
        )
        for n in range(3)
    ]
    try:
        for process in writers:
            assert process.wait(timeout=240) == 0
    finally:
        stop.touch()
        assert reader.wait(timeout=60) == 0
    reports = [json.loads((tmp_path / f"w{n}.json").read_text()) for n in range(3)]
    seen = json.loads((tmp_path / "reader.json").read_text())

    assert all(r["transactions"] == transactions for r in reports)
    # Every transaction landed, each key once: the shared patient's window and the shared event ids too.
    assert duplicate_keys(lake.lake) == {}
    rows = query(
        lake.lake, "SELECT patient_id, count(*) FROM patient_graph.wearable_data GROUP BY ALL ORDER BY ALL"
    )
    assert rows == [("patient-0", DAYS), ("patient-1", DAYS), ("patient-2", DAYS), ("shared", DAYS)]
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.patient_events") == [(transactions,)]
    # The analyst read throughout, never failed and never saw a key twice.
    assert seen["errors"] == [] and seen["reads"] > 0 and seen["max_rows_per_key"] <= 1
    # Every transaction rewrites the shared window, so without turns they collide at COMMIT and run again
    # (one shard's patient lost eleven times in a row before `LakeWriter`); taking turns, none ever does.
    assert [r["tries"] for r in reports] == [transactions] * 3


def test_lake_writers_of_two_processes_take_turns_and_a_thread_reenters_its_own(lake):
    """Two `LakeWriter`s of one lake (two sessions of the catalog database, as two processes have): one
    holds the turn, the other waits its timeout out and gets it once the first lets go. A transaction the
    holder's thread opens inside its own takes nothing more and keeps the turn until the outer one ends."""
    from oura_assets.warehouse.lake import LakeWriter

    mine, theirs = LakeWriter(lake.lake), LakeWriter(lake.lake)
    assert mine.acquire(1.0)
    assert mine.acquire(0.0)  # reentered by the same thread
    started = time.monotonic()
    assert not theirs.acquire(0.3)
    assert time.monotonic() - started >= 0.25  # waited, then gave up
    mine.release()
    assert not theirs.acquire(0.0)  # the outer transaction still holds it
    mine.release()
    assert theirs.acquire(1.0)
    assert not mine.acquire(0.0)
    theirs.release()


def test_a_transaction_waits_for_another_processes_turn_and_then_commits(lake):
    """`Warehouse.transaction` takes the lake's turn: while another process's writer holds it, a write waits
    (and gives up as `WarehouseBusy` at its wait), then goes through once the turn is free."""
    from oura_assets.warehouse.lake import LakeWriter

    other = LakeWriter(lake.lake)
    assert other.acquire(1.0)
    try:
        with pytest.raises(wh.WarehouseBusy), lake.transaction("test: waits", timeout_s=0.3):
            pass
    finally:
        other.release()
    with lake.transaction("test: goes through", timeout_s=5) as conn:
        wh.record_event(conn, patient_id="p", event_type="wearable_sync", payload={}, event_id="e1")
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.patient_events") == [(1,)]


def test_maintenance_merges_the_small_files_of_nightly_window_replacements(lake):
    """Two "nights" of window replacements per patient: Parquet files with delete files beside them, which
    DuckLake merges only once they are rewritten without their deleted rows."""
    end = date(2024, 6, 5)
    patients = 4
    for night in range(2):
        for n in range(patients):
            for attempt in lake.attempts("test: a nightly write"):
                with attempt as conn:
                    rows = [
                        {"metric_type": "readiness", "day": date(2024, 6, d), "metrics": {"score": night}}
                        for d in range(1, 6)
                    ]
                    # More samples than the inlining limit, so each commit writes a Parquet file; the few
                    # wearable_data rows are inlined in the catalog.
                    # The first night writes two days, the second replaces the second day only (as a nightly
                    # lookback re-reads the recent days of a backfill): a delete file beside the first file.
                    first_day = 1 + night
                    wh.replace_raw_heartrate(
                        conn,
                        f"p{n}",
                        datetime(2024, 6, first_day, tzinfo=UTC),
                        datetime(2024, 6, 3, tzinfo=UTC),
                        [
                            {
                                "timestamp": f"2024-06-0{d}T{h:02d}:{m:02d}:00+00:00",
                                "bpm": 60 + night,
                                "source": "rest",
                            }
                            for d in range(first_day, 3)
                            for h in range(24)
                            for m in range(60)
                        ],
                        datetime.now(UTC),
                    )
                    wh.replace_wearable_data(conn, f"p{n}", date(2024, 6, 1), end, rows, datetime.now(UTC))
    done = wh.maintain_lake(lake)
    assert done.before.delete_files >= patients and done.before.files >= 2 * patients
    assert done.after.delete_files == 0 and done.after.files < done.before.files
    assert done.inlined_rows_flushed > 0
    assert query(lake.lake, "SELECT count(*), min(bpm), max(bpm) FROM oura_raw.heartrate") == [
        (patients * 2 * 24 * 60, 60, 61)
    ]
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.wearable_data") == [(patients * 5,)]


def _fill(store: wh.Warehouse, patients: int) -> None:
    now = datetime.now(UTC)
    for attempt in store.attempts("test: fill the source"):
        with attempt as conn:
            for n in range(patients):
                patient = f"patient-{n}"
                wh.upsert_connection(
                    conn,
                    patient,
                    oura_user_id=f"oura-{n}",
                    scopes=["daily"],
                    access_token_enc="enc-a",
                    refresh_token_enc="enc-r",
                    expires_at=now,
                    connected_at=now,
                )
                rows = [
                    {"metric_type": "sleep", "day": date(2024, 6, d), "metrics": {"score": d, "note": "ünï"}}
                    for d in range(1, 8)
                ]
                wh.replace_wearable_data(conn, patient, date(2024, 6, 1), date(2024, 6, 7), rows, now)
                wh.mirror_raw_documents(
                    conn,
                    "daily_readiness",
                    patient,
                    date(2024, 6, 1),
                    date(2024, 6, 7),
                    [{"id": f"r-{n}-{d}", "day": f"2024-06-0{d}", "score": d} for d in range(1, 8)],
                    now,
                )
                wh.record_event(conn, patient_id=patient, event_type="wearable_connected", payload={"n": n})


def test_migrate_copies_an_encrypted_warehouse_into_the_lake_checked_and_idempotent(
    blank_lake_env, tmp_path, monkeypatch, capsys
):
    lake_env = blank_lake_env  # a catalog with no lake in it yet: the migration makes it
    from oura_assets.cli import main

    key = "migrate-test-key-0123456789"
    path = tmp_path / "warehouse.duckdb"
    source = wh.Warehouse(path, key=key)
    _fill(source, 3)
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(path))
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE_KEY", key)
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    catalog, data_path = lake_env["OURA_ASSETS_WAREHOUSE"], lake_env["OURA_ASSETS_LAKE_DATA_PATH"]
    command = ["warehouse", "migrate", "--to", catalog, "--data-path", data_path]

    assert main(command) == 0
    assert "copied into" in capsys.readouterr().out
    target = wh.lake_location(catalog, data_path)
    assert snapshot(target) == snapshot(source) and duplicate_keys(target) == {}
    assert query(target, "SELECT count(*) FROM patient_graph.wearable_data") == [(21,)]
    assert query(target, "SELECT metrics->>'note' FROM patient_graph.wearable_data LIMIT 1") == [("ünï",)]
    # Again: the lake already holds exactly these rows, nothing is written.
    assert main(command) == 0
    assert "already in" in capsys.readouterr().out
    # The source moved on: a lake holding other rows is refused, then replaced on request.
    _fill(source, 4)
    assert main(command) == 3
    assert "--replace" in capsys.readouterr().err
    assert query(target, "SELECT count(DISTINCT patient_id) FROM patient_graph.wearable_data") == [(3,)]
    assert main([*command, "--replace"]) == 0
    assert snapshot(target) == snapshot(source)
    assert query(target, "SELECT count(DISTINCT patient_id) FROM patient_graph.wearable_data") == [(4,)]


def test_migrate_refuses_a_copy_that_does_not_check_out_and_writes_nothing(lake, tmp_path, monkeypatch):
    from oura_assets.warehouse import lake_migrate

    source = wh.Warehouse(tmp_path / "plain.duckdb")
    _fill(source, 2)
    real = lake_migrate._checks
    calls = []

    def corrupted(conn, catalog):  # the copy's own check sees one row missing
        checks = real(conn, catalog)
        calls.append(catalog)
        if catalog == lake_migrate._TARGET and len(calls) == 3:
            name = "patient_graph.wearable_data"
            checks[name] = lake_migrate.TableCheck(checks[name].rows - 1, 0)
        return checks

    monkeypatch.setattr(lake_migrate, "_checks", corrupted)
    with pytest.raises(wh.LakeError, match=r"does not match.*wearable_data: 14 rows -> 13"):
        wh.migrate_to_lake(source, lake.lake)
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.wearable_data") == [(0,)]


def test_erasure_and_compaction_leave_the_patient_in_no_snapshot_file_or_catalog_row(
    lake, lake_env, postgres_server
):
    _fill(lake, 3)
    for attempt in lake.attempts("test: erase"):
        with attempt as conn:
            removed = wh.erase_patient_rows(conn, "patient-1")
    assert removed["patient_graph.wearable_data"] == 7
    # Heavier than the inlining limit for the raw table, so some of the patient's rows sit in Parquet files.
    wh.compact(lake)

    assert query(
        lake.lake, "SELECT count(*) FROM patient_graph.wearable_data WHERE patient_id = 'patient-1'"
    ) == [(0,)]
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.wearable_data") == [(14,)]
    # No older snapshot left to travel back to, no file still holding them, no inlined row in the catalog.
    assert query(lake.lake, "SELECT count(*) FROM ducklake_snapshots(current_database())") == [(1,)]
    data = Path(lake_env["OURA_ASSETS_LAKE_DATA_PATH"])
    parquet = [str(p) for p in data.rglob("*.parquet")]
    assert parquet  # compaction flushed the inlined rows into files: the kept patients are in them
    import duckdb

    def rows_mentioning(needle: str) -> tuple:
        return duckdb.sql(
            "SELECT count(*) FROM read_parquet(?, union_by_name => true) AS t "
            "WHERE contains(CAST(t AS VARCHAR), ?)",
            params=[parquet, needle],
        ).fetchone()

    assert rows_mentioning("patient-1") == (0,) and rows_mentioning("patient-2") != (0,)
    dbname = lake_env["OURA_ASSETS_WAREHOUSE"].split("dbname=")[1].split()[0]
    tables = postgres_server.psql(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'ducklake_inlined_data%'", dbname
    ).split()
    hex_id = b"patient-1".hex()
    for table in tables:
        hits = postgres_server.psql(f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%{hex_id}%'", dbname)  # noqa: S608
        assert hits == "0", table
    assert postgres_server.psql("SELECT count(*) FROM ducklake_data_file", dbname) == postgres_server.psql(
        "SELECT count(*) FROM ducklake_data_file WHERE end_snapshot IS NULL", dbname
    )


def test_lake_maintenance_job_reports_the_files_it_merged(lake, lake_env, monkeypatch):
    import dagster as dg

    from oura_assets.definitions import defs as load_defs

    _fill(lake, 2)
    for name, value in lake_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    definitions = load_defs()
    schedule = definitions.resolve_schedule_def("lake_maintenance_daily")
    assert (
        schedule.cron_schedule == "0 5 * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    )
    result = definitions.resolve_job_def("lake_maintenance").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    (materialization,) = [
        event.step_output_data.metadata
        for event in result.all_node_events
        if event.event_type_value == "STEP_OUTPUT" and event.step_output_data.metadata
    ]
    assert materialization["inlined_rows_flushed"].value > 0
    assert materialization["files_after"].value > 0
    assert query(lake.lake, "SELECT count(*) FROM patient_graph.wearable_data") == [(14,)]


def test_no_transaction_try_returns_or_breaks_from_inside_its_block():
    """`for attempt in warehouse.attempts(...): with attempt as conn: ...` runs the block again after a lost
    DuckLake conflict, but a `return` (or `break`) inside the block would leave with a commit that failed."""
    import ast

    root = Path(__file__).resolve().parent.parent / "oura_assets"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.With) or not any(
                isinstance(item.context_expr, ast.Name)
                and item.context_expr.id == "attempt"
                and item.optional_vars
                for item in node.items
            ):
                continue
            stack = list(node.body)
            while stack:
                inner = stack.pop()
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                    continue
                if isinstance(inner, ast.Return | ast.Break | ast.Continue):
                    found.append(f"{path.relative_to(root)}:{inner.lineno}")
                stack.extend(ast.iter_child_nodes(inner))
    assert found == []
