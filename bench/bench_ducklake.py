"""(g) The DuckLake backend against the DuckDB file: files a nightly run leaves, what maintenance makes of
them, the run's CPU time, and rows and bytes per patient-year (for the README's "Running at scale").

Each arm is a fresh simulator and warehouse (the lake's catalog in a throwaway PostgreSQL server, its data in
a local folder); the patients are connected through the real OAuth flow, 30 days are backfilled, then three
nightly runs (yesterday plus the 3-day lookback, one day apart) are materialized in this process, and the
lake's maintenance job runs. Every table must come out the same in both arms. Then one patient's year
(365 days, heart rate included) is synced into each backend and measured.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import harness

from oura_assets import warehouse as wh
from oura_assets_tests import support
from oura_assets_tests.postgres_server import PostgresServer, running_postgres

BACKFILL_START = date(2024, 6, 1)
BACKFILL_DAYS = 30
NIGHTS = 3
LOOKBACK_DAYS = 4
YEAR_END = date(2024, 7, 13)


@contextlib.contextmanager
def _arm(backend: str, pg: PostgresServer, name: str) -> Iterator[tuple[Any, dict[str, str], Path]]:
    """A simulator and an empty warehouse of `backend`; yields (simulator, environment, work folder)."""
    with tempfile.TemporaryDirectory(prefix="oura-bench-lake-") as tmp:
        workdir = Path(tmp)
        server = harness.start_simulator()
        try:
            env = harness.pipeline_env(server.url, workdir / "warehouse.duckdb")
            if backend == "ducklake":
                env["OURA_ASSETS_WAREHOUSE"] = "ducklake:postgres:" + pg.create_database(name)
                env["OURA_ASSETS_LAKE_DATA_PATH"] = str(workdir / "lake")
                env["OURA_ASSETS_DATA_DIR"] = str(workdir)
            yield server, env, workdir
        finally:
            server.stop()


def _data_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _run(start: date, end: date) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = support.run_sync(start, end)
    if not result.success:
        raise RuntimeError(f"sync {start}..{end} failed: {support.failures(result)}")
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def _nightly_arm(backend: str, pg: PostgresServer, patients: list[str], name: str) -> dict[str, Any]:
    with _arm(backend, pg, name) as (_, env, workdir), harness.applied_env(env) as settings:
        for patient in patients:
            support.connect_patient(settings, patient)
        store = wh.Warehouse.from_settings(settings)
        lake_dir = workdir / "lake"
        backfill = _run(BACKFILL_START, BACKFILL_START + timedelta(days=BACKFILL_DAYS - 1))
        nights = []
        for night in range(NIGHTS):
            yesterday = BACKFILL_START + timedelta(days=BACKFILL_DAYS + night)
            before = _data_files(lake_dir)
            files_before = _lake_files(store)
            timing = _run(yesterday - timedelta(days=LOOKBACK_DAYS - 1), yesterday)
            nights.append(
                {
                    **timing,
                    "files_written": _data_files(lake_dir) - before,
                    "live_files_added": _lake_files(store) - files_before,
                }
            )
        drop = {*support.VOLATILE, "first_seen_at", "last_changed_at"}
        out: dict[str, Any] = {
            "backfill": backfill,
            "nights": nights,
            "snapshot": support.snapshot(settings, drop=drop),
        }
        if store.lake is not None:
            done = wh.maintain_lake(store)
            out.update(
                files_before_maintenance=done.before.files,
                files_after_maintenance=done.after.files,
                data_files_on_disk_after=_data_files(lake_dir),
                inlined_rows_flushed=done.inlined_rows_flushed,
            )
        return out


def _lake_files(store: wh.Warehouse) -> int:
    if store.lake is None:
        return 0
    with store.connect("bench: files") as conn:
        return wh.lake_files(conn).files


def _year_arm(backend: str, pg: PostgresServer, name: str) -> dict[str, Any]:
    with _arm(backend, pg, name) as (_, env, workdir):
        env["OURA_ASSETS_START_DATE"] = (YEAR_END - timedelta(days=364)).isoformat()  # the partitions' start
        with harness.applied_env(env) as settings:
            return _year(settings, pg, name, workdir)


def _year(settings: Any, pg: PostgresServer, name: str, workdir: Path) -> dict[str, Any]:
    """One patient's 365 days synced in one ranged run: rows per table, bytes on disk (and in the catalog)."""
    support.connect_patient(settings, "bench-year")
    timing = _run(YEAR_END - timedelta(days=364), YEAR_END)
    store = wh.Warehouse.from_settings(settings)
    with store.connect("bench: rows") as conn:
        rows = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (constants)
            for table in wh.TABLES
        }
    if store.lake is None:
        with store.connect("bench: checkpoint") as conn:
            conn.execute("CHECKPOINT")
        size = settings.warehouse_path.stat().st_size
        catalog = 0
    else:
        wh.maintain_lake(store)
        size = sum(p.stat().st_size for p in (workdir / "lake").rglob("*") if p.is_file())
        catalog = int(pg.psql(f"SELECT pg_database_size('{name}')"))
    return {**timing, "rows": rows, "data_bytes": size, "catalog_bytes": catalog}


def bench_ducklake(size: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    """(g) Files per nightly run on DuckLake (and after maintenance), CPU vs the DuckDB file, patient-year."""
    patients = [f"bench-patient-{n}" for n in range(size["nightly_patients"])]
    with running_postgres() as pg:
        year_duck = _year_arm("duckdb", pg, "unused")
        year_lake = _year_arm("ducklake", pg, "bench_lake_year")
        print(f"patient-year: duckdb {year_duck}\nducklake {year_lake}", flush=True)
        duck = _nightly_arm("duckdb", pg, patients, "unused")
        lake = _nightly_arm("ducklake", pg, patients, "bench_lake_nightly")
        # The revision times say when each arm first saw a document (minutes apart), not what it holds.
        identical = duck.pop("snapshot") == lake.pop("snapshot")
    files_per_night = [n["files_written"] for n in lake["nights"]]
    cpu_duck = sum(n["cpu_s"] for n in duck["nights"])
    cpu_lake = sum(n["cpu_s"] for n in lake["nights"])
    year_rows = sum(year_lake["rows"].values())
    label = f"(g) {len(patients)} patients, {NIGHTS} nightly runs x {LOOKBACK_DAYS} d"
    year = "(g) 1 patient x 365 d"
    data_mib, catalog_mib = year_lake["data_bytes"] / 2**20, year_lake["catalog_bytes"] / 2**20
    lake_bytes = f"{data_mib:.1f} MiB data + {catalog_mib:.1f} MiB catalog"
    rows += [
        [label, "files written per nightly run", "", f"{files_per_night}", "DuckLake data path"],
        [label, "live files before / after maintenance", "",
         f"{lake['files_before_maintenance']} / {lake['files_after_maintenance']}", ""],
        [label, "CPU s of the nightly runs (this process)", f"{cpu_duck:.1f}", f"{cpu_lake:.1f}",
         f"{cpu_lake / cpu_duck:.2f}x" if cpu_duck else ""],
        [label, "all tables identical?", "", "", "identical" if identical else "DIFFERENT"],
        [year, "rows (all tables)", f"{sum(year_duck['rows'].values())}", f"{year_rows}", ""],
        [year, "bytes", f"{year_duck['data_bytes'] / 2**20:.1f} MiB file", lake_bytes, ""],
    ]  # fmt: skip
    return {
        "what": "nightly runs into a DuckDB file and into a DuckLake (PostgreSQL catalog, local data path)",
        "params": {"patients": len(patients), "nights": NIGHTS, "lookback_days": LOOKBACK_DAYS},
        "results": {
            "duckdb": duck,
            "ducklake": lake,
            "files_per_nightly_run": files_per_night,
            "tables_identical": identical,
            "patient_year": {"duckdb": year_duck, "ducklake": year_lake},
        },
        "ok": identical and year_duck["rows"] == year_lake["rows"],
        "check": "every table identical in both arms; the same rows per table for the patient-year",
    }
