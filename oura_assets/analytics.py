"""The analytics snapshot: a read-only copy of the warehouse for data scientists, republished after each run.

A notebook that keeps the warehouse itself open holds DuckDB's file lock and stalls the pipeline and the API.
So analysts read a separate file (`OURA_ASSETS_ANALYTICS`, default `data/analytics.duckdb`) that the pipeline
never opens again once written: each publication builds a new file aside in the same directory and renames it
over the old one (`os.replace`). A reader holding the old file keeps reading the old file (its inode lives on
until they close it); the next `connect` sees the new one. Nobody waits on anybody.

What a snapshot holds:
- every table of `patient_graph` and `oura_raw` except bookkeeping (sync requests and results, OAuth states,
  the audit log) and secret columns (the encrypted tokens, and by rule any `*_enc` or `*token*` column), so a
  table another module adds (e.g. `wearable_day_status`) is published without a change here;
- views `daily_wide` and `hrv_7d`, created inside the snapshot file itself so they work when the file is
  opened alone, read-only, by any DuckDB that reads its storage version;
- `snapshot_info` (when it was published) and `snapshot_tables` (rows per table).

The views and the snapshot's description live in the file's `main` schema, not in a schema called
`analytics`: DuckDB names a file's catalog after the file, and in `analytics.duckdb` a schema `analytics`
would make every `analytics.x` ambiguous (a Binder Error). In `main`, `analytics.daily_wide` is the
catalog-qualified name of the view under the default file name, and `daily_wide` works under any name.

The file is written at storage version v1.5.0 when the writing DuckDB knows it, so the `duckdb` CLI from PyPI
(`duckdb-cli`, 1.5.x, `make sql`) and older notebooks open a file written by a newer Python `duckdb`.
No Dagster here: the asset in `defs/analytics.py` only calls `publish_snapshot`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import filelock

from oura_assets import warehouse as wh
from oura_assets.clock import utc_now
from oura_assets.warehouse.encryption import attach, open_database

PUBLISHED_SCHEMAS = ("patient_graph", "oura_raw")
# Bookkeeping of the pipeline and the API, not data about patients' health: never published.
EXCLUDED_TABLES = frozenset(
    {
        "patient_graph.sync_requests",
        "patient_graph.sync_results",
        "patient_graph.oauth_states",
        "patient_graph.audit_log",
    }
)
# Storage version the snapshot is written at (readable by DuckDB 1.5 and later, the `duckdb-cli` on PyPI).
STORAGE_VERSION = "v1.5.0"
_ATTACHED = "analytics_snapshot"
# How long a publication waits for another one to finish (a copy of the whole warehouse) before giving up.
PUBLISH_WAIT_S = 600.0

DAILY_WIDE_SQL = """
CREATE VIEW main.daily_wide AS
WITH keys AS (
    SELECT patient_id, source, day FROM patient_graph.patient_wearable_daily_stats
    UNION
    SELECT patient_id, source, day FROM patient_graph.wearable_data
),
metrics AS (
    SELECT
        patient_id, source, day,
        any_value(metrics) FILTER (WHERE metric_type = 'readiness') AS readiness,
        any_value(metrics) FILTER (WHERE metric_type = 'sleep') AS sleep,
        any_value(metrics) FILTER (WHERE metric_type = 'activity') AS activity,
        any_value(metrics) FILTER (WHERE metric_type = 'hrv') AS hrv
    FROM patient_graph.wearable_data
    GROUP BY ALL
)
SELECT
    k.patient_id,
    k.source,
    k.day,
    s.readiness_score,
    s.sleep_score,
    s.activity_score,
    s.total_sleep_seconds::DOUBLE / 3600 AS total_sleep_h,
    (m.sleep->>'deepSleep')::DOUBLE / 60 AS deep_sleep_min,
    (m.sleep->>'remSleep')::DOUBLE / 60 AS rem_sleep_min,
    (m.sleep->>'lightSleep')::DOUBLE / 60 AS light_sleep_min,
    (m.sleep->>'awake')::DOUBLE / 60 AS awake_min,
    (m.sleep->>'latency')::DOUBLE / 60 AS sleep_latency_min,
    (m.sleep->>'efficiency')::INTEGER AS sleep_efficiency_pct,
    (m.sleep->>'bedtimeStart')::TIMESTAMPTZ AS bedtime_start_utc,
    (m.sleep->>'bedtimeEnd')::TIMESTAMPTZ AS bedtime_end_utc,
    s.average_hrv AS average_hrv_ms,
    (m.hrv->>'minHrv')::DOUBLE AS min_hrv_ms,
    (m.hrv->>'maxHrv')::DOUBLE AS max_hrv_ms,
    s.resting_heart_rate AS resting_hr_bpm,
    s.hr_avg AS hr_avg_bpm,
    s.hr_min AS hr_min_bpm,
    s.hr_max AS hr_max_bpm,
    s.hr_samples,
    s.steps,
    s.active_calories AS active_kcal,
    s.total_calories AS total_kcal,
    (m.activity->>'equivalentWalkingDistance')::DOUBLE AS walking_distance_m,
    (m.readiness->>'temperatureDeviation')::DOUBLE AS temperature_deviation_c,
    s.spo2_average_pct,
    s.breathing_disturbance_index,
    s.stress_high_seconds::DOUBLE / 60 AS stress_high_min,
    s.recovery_high_seconds::DOUBLE / 60 AS recovery_high_min,
    s.stress_day_summary,
    s.resilience_level,
    s.vascular_age_years,
    s.utc_offset_minutes
FROM keys AS k
LEFT JOIN patient_graph.patient_wearable_daily_stats AS s USING (patient_id, source, day)
LEFT JOIN metrics AS m USING (patient_id, source, day)
"""

HRV_7D_SQL = """
CREATE VIEW main.hrv_7d AS
SELECT
    patient_id,
    source,
    day,
    average_hrv_ms,
    resting_hr_bpm,
    avg(average_hrv_ms) OVER last_7_days AS hrv_7d_avg_ms,
    avg(resting_hr_bpm) OVER last_7_days AS resting_hr_7d_avg_bpm,
    count(average_hrv_ms) OVER last_7_days AS nights_7d
FROM main.daily_wide
WHERE average_hrv_ms IS NOT NULL OR resting_hr_bpm IS NOT NULL
WINDOW last_7_days AS (
    PARTITION BY patient_id, source ORDER BY day
    RANGE BETWEEN INTERVAL 6 DAYS PRECEDING AND CURRENT ROW
)
"""

VIEW_COMMENTS = {
    "main.daily_wide": "One row per patient-day with any data: one column per metric, the unit in its "
    "name (h, min, ms, bpm, kcal, m, pct, c); full precision, round when you present.",
    "main.hrv_7d": "Per patient-day: the night's HRV and resting heart rate beside their averages over "
    "the 7 calendar days ending that day (days without a night are not counted).",
}


@dataclass(frozen=True)
class SnapshotReport:
    """What a publication wrote: where, when, rows per table, and how long the warehouse lock was held."""

    path: Path
    published_at: datetime
    tables: dict[str, int]
    lock_held_s: float
    elapsed_s: float

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def is_secret_column(name: str) -> bool:
    """Columns never published: encrypted tokens, and by rule anything that looks like one."""
    lowered = name.lower()
    return lowered.endswith("_enc") or "token" in lowered or "secret" in lowered


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _published_tables(conn: duckdb.DuckDBPyConnection, catalog: str | None = None) -> dict[str, list[str]]:
    """Table name -> the columns to publish, read from `catalog`'s own catalog (default: the warehouse)."""
    rows = conn.execute(
        "SELECT c.table_schema || '.' || c.table_name, c.column_name "
        "FROM information_schema.columns AS c JOIN information_schema.tables AS t "
        "USING (table_catalog, table_schema, table_name) "
        "WHERE c.table_catalog = coalesce(?, current_database()) AND t.table_type = 'BASE TABLE' "
        "AND c.table_schema IN (SELECT unnest(?)) "
        "ORDER BY c.table_schema, c.table_name, c.ordinal_position",
        [catalog, list(PUBLISHED_SCHEMAS)],
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        if table not in EXCLUDED_TABLES and not is_secret_column(column):
            tables.setdefault(table, []).append(column)
    return tables


def _copy_tables(
    conn: duckdb.DuckDBPyConnection,
    target: Path,
    key: str | None,
    source: str | None = None,
    without_patient: str | None = None,
) -> dict[str, int]:
    """Copy the published tables of catalog `source` (default: the connection's own, the warehouse) into a new
    DuckDB file at `target` (encrypted with `key` when given), leaving out every row of `without_patient`."""
    major, minor = (int(part) for part in duckdb.__version__.split(".")[:2])
    options = {"STORAGE_VERSION": STORAGE_VERSION} if (major, minor) >= (1, 5) else {}
    attach(conn, target, _ATTACHED, key, options=options)
    # On a DuckLake nothing holds writers off while the tables are copied: one transaction reads them all from
    # one snapshot (on a DuckDB file the writer lock does that), committed before the DETACH.
    consistent = source is None and wh.is_lake_connection(conn)
    if consistent:
        conn.execute("BEGIN TRANSACTION")
    try:
        tables = _published_tables(conn, source)
        prefix = f"{source}." if source else ""
        for schema in PUBLISHED_SCHEMAS:
            conn.execute(f"CREATE SCHEMA {_ATTACHED}.{schema}")
        counts = {}
        for table, columns in tables.items():
            schema, name = table.split(".", 1)
            column_list = ", ".join(_quote(c) for c in columns)
            keep = "patient_id IS DISTINCT FROM $1" if without_patient and "patient_id" in columns else "true"
            conn.execute(
                f"CREATE TABLE {_ATTACHED}.{schema}.{_quote(name)} AS "  # noqa: S608 (names from the catalog)
                f"SELECT {column_list} FROM {prefix}{schema}.{_quote(name)} WHERE {keep}",
                [without_patient] if keep != "true" else [],
            )
            counts[table] = conn.execute(
                f"SELECT count(*) FROM {_ATTACHED}.{schema}.{_quote(name)}"  # noqa: S608
            ).fetchone()[0]
        if consistent:
            conn.execute("COMMIT")
            consistent = False
        return counts
    finally:
        if consistent:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
        conn.execute(f"DETACH {_ATTACHED}")


def _describe(conn: duckdb.DuckDBPyConnection, tables: dict[str, int]) -> None:
    """Comments from the warehouse's schema (`schema.TABLES`), so `duckdb_columns()` explains each column."""
    for name in tables:
        table = wh.TABLES.get(name)
        if table is None:
            continue
        conn.execute(f"COMMENT ON TABLE {name} IS {_literal(table.description)}")
        schema, table_name = name.split(".", 1)
        present = {
            c
            for (c,) in conn.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?",
                [schema, table_name],
            ).fetchall()
        }
        for column in table.columns:
            if column.name in present:
                unit = f" Unit: {column.unit}." if column.unit else ""
                conn.execute(
                    f"COMMENT ON COLUMN {name}.{_quote(column.name)} IS {_literal(column.description + unit)}"
                )


def _add_views(path: Path, tables: dict[str, int], published_at: datetime, key: str | None) -> None:
    """Views and the snapshot's own description, created in the snapshot file so they work read alone."""
    with open_database(path, key) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        # One transaction for the views and the hundreds of COMMENT statements: each would otherwise commit
        # (and write the WAL) on its own, which was most of a publication's cost on an empty warehouse.
        conn.execute("BEGIN")
        conn.execute(DAILY_WIDE_SQL)
        conn.execute(HRV_7D_SQL)
        for view, comment in VIEW_COMMENTS.items():
            conn.execute(f"COMMENT ON VIEW {view} IS {_literal(comment)}")
        _describe(conn, tables)
        conn.execute(
            "CREATE TABLE main.snapshot_info AS SELECT ?::TIMESTAMPTZ AS published_at, ? AS duckdb_version",
            [published_at, duckdb.__version__],
        )
        conn.execute(
            "CREATE TABLE main.snapshot_tables AS "
            "SELECT unnest(?::VARCHAR[]) AS table_name, unnest(?::BIGINT[]) AS row_count",
            [list(tables), list(tables.values())],
        )
        conn.execute("COMMIT")
        conn.execute("CHECKPOINT")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_aside_files(target: Path) -> None:
    """Files a killed publication left aside (only called under the publish lock, so none is in use)."""
    for leftover in target.parent.glob(f".{target.name}.*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _install(
    aside: Path, target: Path, tables: dict[str, int], published_at: datetime, key: str | None
) -> None:
    """Finish the copy written `aside` (views, comments, snapshot info) and put it in place of `target`
    atomically, both fsynced: a reader opens the old snapshot or the whole new one, never a part."""
    _add_views(aside, tables, published_at, key)
    _fsync(aside)
    os.replace(aside, target)
    _fsync(target.parent)


def _discard(aside: Path) -> None:
    """The copy aside and its WAL, once installed or failed (no-op for what is not there)."""
    for leftover in (aside, aside.with_name(aside.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def publish_snapshot(
    warehouse: wh.WarehouseAccess,
    target: Path | str,
    purpose: str = "analytics snapshot",
    publish_wait_s: float = PUBLISH_WAIT_S,
    key: str | None = None,
) -> SnapshotReport:
    """Write a new snapshot of `warehouse` aside, then atomically replace `target` with it.

    The warehouse's writer lock is held only while the tables are copied; views, comments and the rename
    happen after it is released. Publications serialize on `<dir>/.<name>.publish.lock`, so two runs finishing
    together publish in the order they copied and never leave an older copy in place of a newer one.
    """
    started = time.monotonic()
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    publish_lock = filelock.FileLock(str(target.parent / f".{target.name}.publish.lock"))
    with publish_lock.acquire(timeout=publish_wait_s):
        _remove_aside_files(target)
        try:
            with warehouse.connect(f"{purpose}: copy to {target.name}") as conn:
                locked = time.monotonic()
                published_at = utc_now()
                tables = _copy_tables(conn, aside, key)
            lock_held_s = time.monotonic() - locked
            _install(aside, target, tables, published_at, key)
        finally:
            _discard(aside)
    return SnapshotReport(
        path=target,
        published_at=published_at,
        tables=tables,
        lock_held_s=lock_held_s,
        elapsed_s=time.monotonic() - started,
    )


def erase_from_snapshot(
    target: Path | str, patient_id: str, publish_wait_s: float = PUBLISH_WAIT_S, key: str | None = None
) -> SnapshotReport | None:
    """Republish the snapshot without any row of `patient_id` (erasure); None when there is no snapshot.

    Built from the current snapshot, not the warehouse, so it never waits for the writer lock (the API calls
    it while answering). The old file is unlinked at once; a reader holding it keeps its copy until they close
    it. Under the publish lock, so a run publishing a copy taken before the erasure is rewritten after it.
    """
    started = time.monotonic()
    target = Path(target).expanduser().resolve()
    publish_lock = filelock.FileLock(str(target.parent / f".{target.name}.publish.lock"))
    with publish_lock.acquire(timeout=publish_wait_s):
        if not target.exists():
            return None
        _remove_aside_files(target)
        aside = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            conn = duckdb.connect()
            try:
                attach(conn, target, "published", key, read_only=True)
                (published_at,) = conn.execute(
                    "SELECT published_at FROM published.main.snapshot_info"
                ).fetchone()
                tables = _copy_tables(conn, aside, key, source="published", without_patient=patient_id)
                conn.execute("DETACH published")
            finally:
                conn.close()
            _install(aside, target, tables, published_at, key)
        finally:
            _discard(aside)
    return SnapshotReport(target, published_at, tables, lock_held_s=0.0, elapsed_s=time.monotonic() - started)
