"""The analytics snapshot: published by every sync run, readable alone and read-only, free of secrets, and
never in the way of a run, even when another process holds it open the whole time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from oura_assets import analytics
from oura_assets import warehouse as wh
from oura_assets.config import OAUTH_SCOPES
from oura_assets.definitions import defs as load_defs
from oura_assets.warehouse.encryption import open_database
from oura_assets_tests import support

DUCKDB_CLI = Path(sys.executable).parent / "duckdb"
START, END = date(2024, 6, 10), date(2024, 6, 16)


def run_sync() -> tuple[dg.Definitions, dg.DagsterInstance, str]:
    """One sync run over START..END on an ephemeral instance kept for its materializations; unpaced, since
    what is published is the subject here, not how the requests were spread (`support.UNPACED`)."""
    definitions, instance = load_defs(), dg.DagsterInstance.ephemeral()
    result = support.run_sync(
        START, END, definitions=definitions, instance=instance, run_config=support.UNPACED
    )
    assert result.success, support.failures(result)
    return definitions, instance, result.run_id


def read(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_run_publishes_snapshot_with_views_and_without_secrets_that_the_duckdb_cli_opens(
    pipeline_env, connect_patient, warehouse_backend
):
    settings = pipeline_env
    # Every collection is granted (`spo2Daily` too, which the connect flow does not ask for), so every asset
    # below has rows to show.
    every_scope = (*OAUTH_SCOPES, "spo2Daily")
    patients = [
        connect_patient("patient-a", scopes=every_scope),
        connect_patient("patient-b", scopes=every_scope),
    ]
    definitions, instance, run_id = run_sync()
    snapshot = settings.analytics_path

    tables = {t for (t,) in read(snapshot, "SELECT table_name FROM snapshot_tables")}
    assert {"patient_graph.wearable_data", "patient_graph.patient_wearable_daily_stats"} <= tables
    assert {"patient_graph.wearable_connections", "oura_raw.sleep", "oura_raw.heartrate"} <= tables
    assert not tables & analytics.EXCLUDED_TABLES
    columns = {
        c for (c,) in read(snapshot, "SELECT column_name FROM (DESCRIBE patient_graph.wearable_connections)")
    }
    assert "status" in columns and not {"access_token_enc", "refresh_token_enc"} & columns

    # One row per patient-day, the same days as the daily stats, figures converted to the unit in their name.
    wide = read(snapshot, "SELECT patient_id, day, total_sleep_h, deep_sleep_min FROM daily_wide")
    assert len(wide) == len({(p, d) for p, d, _, _ in wide})
    stats = read(
        snapshot,
        "SELECT patient_id, day, total_sleep_seconds, (m.metrics->>'deepSleep')::DOUBLE "
        "FROM patient_graph.patient_wearable_daily_stats LEFT JOIN patient_graph.wearable_data AS m "
        "USING (patient_id, source, day) WHERE m.metric_type = 'sleep' OR m.metric_type IS NULL",
    )
    by_day = {(p, d): (h, m) for p, d, h, m in wide}
    assert stats and all(
        by_day[(p, d)] == (s / 3600 if s is not None else None, deep / 60 if deep is not None else None)
        for p, d, s, deep in stats
    )
    # The 7-day view averages the nights of the 7 calendar days ending on each day.
    nights = read(
        snapshot, "SELECT patient_id, day, average_hrv_ms FROM daily_wide WHERE average_hrv_ms IS NOT NULL"
    )
    for patient_id, day, hrv_7d, count in read(
        snapshot, "SELECT patient_id, day, hrv_7d_avg_ms, nights_7d FROM hrv_7d"
    ):
        window = [h for p, d, h in nights if p == patient_id and 0 <= (day - d).days <= 6]
        assert count == len(window) and hrv_7d == pytest.approx(sum(window) / len(window) if window else None)

    # No token, plaintext or encrypted, anywhere in the file.
    with wh.Warehouse(settings.warehouse_path).connect("test: tokens") as conn:
        encrypted = [
            v
            for row in conn.execute(
                "SELECT access_token_enc, refresh_token_enc FROM patient_graph.wearable_connections"
            ).fetchall()
            for v in row
        ]
    content = snapshot.read_bytes()
    for secret in [p.access_token for p in patients] + encrypted:
        assert secret.encode() not in content

    # The UI: every asset's materialization carries its row count and a Markdown preview.
    for key in definitions.resolve_all_asset_keys():
        event = instance.get_latest_materialization_event(key)
        assert event is not None, key
        metadata = event.asset_materialization.metadata
        assert metadata["dagster/row_count"].value > 0, key
        assert isinstance(metadata["preview"], dg.MarkdownMetadataValue) and "|" in metadata["preview"].value
    run = instance.get_run_by_id(run_id)
    assert {run.tags[f"oura_assets/patients_{s}"] for s in ("ok", "partial", "failed")} == {"2", "0"}

    # It opens in the DuckDB CLI that `make sql` runs, views included (a test of its own before, with a run).
    assert DUCKDB_CLI.exists(), "duckdb-cli (a dev dependency) is not installed in this environment"
    answer = subprocess.run(
        [
            str(DUCKDB_CLI),
            "-readonly",
            "-csv",
            str(snapshot),
            "-c",
            "SELECT count(*) > 0 FROM analytics.daily_wide; SELECT count(*) > 0 FROM hrv_7d",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["(count_star()", ">", "0)", "true", "(count_star()", ">", "0)", "true"]


HOLDER = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
print(conn.execute("SELECT published_at FROM snapshot_info").fetchone()[0].isoformat(), flush=True)
sys.stdin.readline()
print(conn.execute("SELECT published_at FROM snapshot_info").fetchone()[0].isoformat(), flush=True)
print(conn.execute("SELECT count(*) FROM daily_wide").fetchone()[0], flush=True)
"""


def timed_run() -> float:
    started = time.monotonic()
    run_sync()
    return time.monotonic() - started


@pytest.mark.slow
def test_snapshot_held_open_by_another_process_never_delays_a_run(pipeline_env, connect_patient):
    snapshot = pipeline_env.analytics_path
    connect_patient("patient-a")
    connect_patient("patient-b")
    run_sync()
    before = read(snapshot, "SELECT published_at FROM snapshot_info")[0][0]
    inode = os.stat(snapshot).st_ino

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(snapshot)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == before.isoformat()
        with_reader = timed_run()
        after = read(snapshot, "SELECT published_at FROM snapshot_info")[0][0]
        assert after > before and os.stat(snapshot).st_ino != inode
        # The reader still reads the snapshot it opened, whole, while the new one is in place.
        out, _ = holder.communicate("go\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0
    published, rows = out.split()
    assert published == before.isoformat() and int(rows) > 0
    # Printed, not asserted (a loaded host's timings say nothing); a run without a reader takes about as long
    # (bench/ measures runs; a third run here only to print its time cost a run in the serialized races).
    print(f"\nrun wall time: {with_reader:.2f}s with the snapshot held open in another process")


def test_failed_publication_keeps_the_run_green_and_the_old_snapshot(pipeline_env, connect_patient):
    connect_patient("patient-a")
    pipeline_env.analytics_path.mkdir()  # a directory where the file goes: os.replace fails
    _, instance, run_id = run_sync()
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    assert instance.get_latest_materialization_event(dg.AssetKey(["analytics", "snapshot"])) is None
    assert not list(pipeline_env.analytics_path.parent.glob(".analytics.duckdb.*.tmp*"))


def test_leftover_of_a_killed_publication_is_removed(pipeline_env, tmp_path):
    target = tmp_path / "out" / "analytics.duckdb"
    target.parent.mkdir()
    leftover = target.parent / ".analytics.duckdb.deadbeef.tmp"
    leftover.write_bytes(b"half a file")
    report = analytics.publish_snapshot(wh.Warehouse(pipeline_env.warehouse_path), target)
    assert report.path == target and not leftover.exists()
    assert read(target, "SELECT count(*) FROM daily_wide") == [(0,)]
    assert sorted(p.name for p in target.parent.iterdir()) == [
        ".analytics.duckdb.publish.lock",
        "analytics.duckdb",
    ]


@pytest.mark.slow
def test_erasure_rewrites_the_snapshot_without_the_patient_and_without_the_warehouse_lock(
    pipeline_env, connect_patient
):
    connect_patient("patient-erased")
    connect_patient("patient-kept")
    run_sync()
    snapshot = pipeline_env.analytics_path
    before = read(snapshot, "SELECT published_at FROM snapshot_info")[0][0]
    # Another process holding the warehouse would make a copy from it wait; this one reads only the snapshot.
    with wh.Warehouse(pipeline_env.warehouse_path).connect("test: hold the warehouse"):
        report = analytics.erase_from_snapshot(snapshot, "patient-erased")
    assert report is not None and report.published_at == before
    with duckdb.connect(str(snapshot), read_only=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT table_name FROM snapshot_tables").fetchall()]
        for table in tables:
            describe = f"SELECT column_name FROM (DESCRIBE {table})"  # noqa: S608 (names from the file)
            columns = {c for (c,) in conn.execute(describe).fetchall()}
            if "patient_id" in columns:
                rows = conn.execute(f"SELECT DISTINCT patient_id FROM {table}").fetchall()  # noqa: S608
                patients = {p for (p,) in rows}
                assert "patient-erased" not in patients, table
        assert conn.execute("SELECT DISTINCT patient_id FROM daily_wide").fetchall() == [("patient-kept",)]
    assert b"patient-erased" not in snapshot.read_bytes()
    assert analytics.erase_from_snapshot(snapshot.parent / "absent.duckdb", "patient-kept") is None


def _published_rows(path: Path, key: str | None = None) -> dict[str, list[str]]:
    """Every published table's rows, order-free, as the snapshot at `path` holds them."""
    with open_database(path, key, read_only=True) as conn:
        tables = [t for (t,) in conn.execute("SELECT table_name FROM snapshot_tables ORDER BY 1").fetchall()]
        return {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}  # noqa: S608


def test_a_later_run_refreshes_the_snapshot_to_what_a_whole_copy_holds(
    pipeline_env, connect_patient, tmp_path
):
    """The nightly run's publication refreshes the previous snapshot with what changed instead of copying
    the warehouse whole (issue 10), and holds exactly what a whole copy holds; encrypted stays encrypted;
    a warehouse changed behind the runs' backs (no sync result says so) is copied whole again."""
    connect_patient("patient-a")
    connect_patient("patient-b")
    run_sync()  # the first publication: a whole copy
    store, snapshot = wh.Warehouse(pipeline_env.warehouse_path), pipeline_env.analytics_path
    encrypted, key = tmp_path / "encrypted" / "analytics.duckdb", "k" * 32
    assert analytics.publish_snapshot(store, encrypted, key=key, incremental=True).mode == "full"

    later = (date(2024, 6, 17), date(2024, 6, 20))
    definitions, instance = load_defs(), dg.DagsterInstance.ephemeral()
    assert support.run_sync(
        *later, definitions=definitions, instance=instance, run_config=support.UNPACED
    ).success
    event = instance.get_latest_materialization_event(dg.AssetKey(["analytics", "snapshot"]))
    assert event is not None and event.asset_materialization.metadata["mode"].value == "incremental"
    whole = analytics.publish_snapshot(store, tmp_path / "whole.duckdb")
    assert whole.mode == "full"
    expected = _published_rows(whole.path)
    assert read(whole.path, "SELECT max(day) FROM patient_graph.wearable_data")[0][0] >= later[0]
    assert _published_rows(snapshot) == expected

    refreshed = analytics.publish_snapshot(store, encrypted, key=key, run_days=later, incremental=True)
    assert refreshed.mode == "incremental" and refreshed.tables == whole.tables
    assert _published_rows(encrypted, key) == expected
    assert b"patient-a" not in encrypted.read_bytes()
    with pytest.raises(duckdb.Error):
        read(encrypted, "SELECT count(*) FROM snapshot_info")

    with store.transaction("test: a change no sync result announces") as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(
            "INSERT INTO oura_raw.heartrate BY NAME SELECT * REPLACE "
            '("timestamp" - INTERVAL 400 DAY AS "timestamp") FROM oura_raw.heartrate LIMIT 1'
        )
    healed = analytics.publish_snapshot(store, snapshot, run_days=(later[1], later[1]), incremental=True)
    assert healed.mode.startswith("full")
    assert _published_rows(snapshot) == _published_rows(analytics.publish_snapshot(store, whole.path).path)
