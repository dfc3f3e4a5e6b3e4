"""Bringing a DuckDB file to the current schema: numbered migrations, recorded in `main.schema_version`.

Every connection checks the file's version (one indexed read) and migrates it when it is behind, so a file
created by an older release, or deleted and recreated under a running process, is never used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import duckdb

from oura_assets.domain import CORE_COLLECTIONS, HEARTRATE, SESSION, WELLNESS_COLLECTIONS, WORKOUT
from oura_assets.warehouse.dialect import GUARDS_DDL, seed_guards_sql
from oura_assets.warehouse.lake import is_conflict, is_lake_connection
from oura_assets.warehouse.schema import (
    AUDIT_LOG,
    RETENTION_HORIZONS,
    REVISION_COLUMNS,
    SCHEMA_VERSION_TABLE,
    SCHEMAS,
    TABLES,
)
from oura_assets.warehouse.schema_collections import (
    WEARABLE_COLLECTION_STATUS,
    WEARABLE_SESSIONS,
    WEARABLE_WORKOUTS,
    WELLNESS_COLUMNS,
)

logger = logging.getLogger(__name__)

# Migration 1 creates the tables as `schema.TABLES` describes them today. A later change to a table keeps
# that description current (so fresh files and the UI see it) and adds a migration that brings a file at
# an older version to it (ALTER TABLE … ADD COLUMN IF NOT EXISTS, which is a no-op on a fresh file).
# Migrations 2 and 3 touch the raw tables that existed then (`CORE_COLLECTIONS`): the ones migration 6 adds
# are created with those columns.
#
# Each migration's statements are a function of the backend (`lake`: a DuckLake), so one numbered history
# serves both: a DuckLake gets the same tables without PRIMARY KEY (it has none, `dialect.py` keeps keys
# unique) and skips what it cannot do and does not need (see migration 3).
Statements = Callable[[bool], tuple[str, ...]]


def _initial(lake: bool) -> tuple[str, ...]:
    return (
        *(f"CREATE SCHEMA IF NOT EXISTS {schema}" for schema in SCHEMAS),
        *(table.ddl(keys=not lake) for table in TABLES.values()),
    )


def _revisions(lake: bool) -> tuple[str, ...]:
    return (
        # Documents already stored count as first versions seen when they were last fetched: their
        # history before this migration is unknown, so revision 0 (no content change seen yet).
        *(
            f"ALTER TABLE oura_raw.{c} ADD COLUMN IF NOT EXISTS {column.name} {column.type}"
            for c in CORE_COLLECTIONS
            for column in REVISION_COLUMNS
        ),
        *(
            f"UPDATE oura_raw.{c} SET first_seen_at = coalesce(first_seen_at, fetched_at), "  # noqa: S608
            "last_changed_at = coalesce(last_changed_at, fetched_at), revision = coalesce(revision, 0) "
            "WHERE first_seen_at IS NULL OR last_changed_at IS NULL OR revision IS NULL"
            for c in CORE_COLLECTIONS
        ),
        "ALTER TABLE patient_graph.sync_results ADD COLUMN IF NOT EXISTS documents JSON",
        TABLES["oura_raw.document_revisions"].ddl(keys=not lake),
        TABLES["patient_graph.wearable_day_status"].ddl(keys=not lake),
    )


def _revisions_not_null(lake: bool) -> tuple[str, ...]:
    # Apart from migration 2: DuckDB cannot add the constraint in the transaction that backfilled the
    # column ("Cannot create index with outstanding updates"). A DuckLake is never older than migration 1's
    # tables, which declare these columns NOT NULL already (and DuckLake 1.5.5 refuses SET NOT NULL on a
    # column without statistics, i.e. an empty table).
    if lake:
        return ()
    return tuple(
        f"ALTER TABLE oura_raw.{c} ALTER COLUMN {column.name} SET NOT NULL"
        for c in CORE_COLLECTIONS
        for column in REVISION_COLUMNS
    )


def _heartrate_without_key(lake: bool) -> tuple[str, ...]:
    # DuckDB cannot drop a primary key (ALTER TABLE … DROP CONSTRAINT is not supported), so the table is
    # copied into one without it, in the migration's one transaction. The copy is the whole table, once:
    # 105 M samples took 26 s (50 CPU-s, 1.9 GiB of memory) on two cores. The file keeps its size (DuckDB
    # reuses the freed blocks). A DuckLake never had the key.
    if lake:
        return ()
    heartrate = TABLES[f"oura_raw.{HEARTRATE}"]
    rebuilt = f"{heartrate.name}_without_key"
    return (
        f"DROP TABLE IF EXISTS {rebuilt}",
        heartrate.ddl(keys=False, name=rebuilt),
        f"INSERT INTO {rebuilt} BY NAME SELECT * FROM {heartrate.name}",  # noqa: S608 (constants)
        f"DROP TABLE {heartrate.name}",
        f"ALTER TABLE {rebuilt} RENAME TO {HEARTRATE}",
    )


_MIGRATIONS: tuple[tuple[int, str, Statements], ...] = (
    (1, "initial schema: CONTRACT §5 tables and the project's bookkeeping tables", _initial),
    (
        2,
        "document revisions (first_seen_at, last_changed_at, revision; oura_raw.document_revisions), "
        "wearable_day_status, sync_results.documents",
        _revisions,
    ),
    (3, "raw document revision columns NOT NULL", _revisions_not_null),
    (
        4,
        "health-data duties: the append-only audit log and the raw-data retention horizons",
        lambda lake: (AUDIT_LOG.ddl(keys=not lake), RETENTION_HORIZONS.ddl(keys=not lake)),
    ),
    (
        5,
        "patient_graph.webhook_events: Oura webhook events accepted, for deduplicating redeliveries",
        lambda lake: (TABLES["patient_graph.webhook_events"].ddl(keys=not lake),),
    ),
    (
        6,
        "workouts, sessions and the daily SpO2, stress, resilience and cardiovascular-age summaries: "
        "their raw tables, wearable_workouts, wearable_sessions, wearable_collection_status, daily-stats "
        "columns",
        lambda lake: (
            *(TABLES[f"oura_raw.{c}"].ddl(keys=not lake) for c in (WORKOUT, SESSION, *WELLNESS_COLLECTIONS)),
            WEARABLE_WORKOUTS.ddl(keys=not lake),
            WEARABLE_SESSIONS.ddl(keys=not lake),
            WEARABLE_COLLECTION_STATUS.ddl(keys=not lake),
            *(
                f"ALTER TABLE patient_graph.patient_wearable_daily_stats ADD COLUMN IF NOT EXISTS "
                f"{column.name} {column.type}"
                for column in WELLNESS_COLUMNS
            ),
        ),
    ),
    (
        7,
        "oura_raw.heartrate without a PRIMARY KEY index (its writers keep the key, as on a DuckLake)",
        _heartrate_without_key,
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_MIGRATION_ATTEMPTS = 5
"""On a DuckLake, processes starting together may migrate together: one commits, the others conflict (two
creates of one table) and start over from the version the winner recorded."""


def _migrate(conn: duckdb.DuckDBPyConnection) -> None:
    """Apply the migrations newer than the file's `main.schema_version`, each in its own transaction."""
    lake = is_lake_connection(conn)
    for attempt in range(1, _MIGRATION_ATTEMPTS + 1):
        try:
            _migrate_once(conn, lake)
            return
        except duckdb.Error as exc:
            if not lake or not is_conflict(exc) or attempt == _MIGRATION_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)


def _migrate_once(conn: duckdb.DuckDBPyConnection, lake: bool) -> None:
    conn.execute(SCHEMA_VERSION_TABLE.ddl(keys=not lake))
    if lake:
        conn.execute(GUARDS_DDL)
    (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM main.schema_version").fetchone() or (0,)
    for version, description, statements in _MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            for statement in statements(lake):
                conn.execute(statement)
            if lake:
                conn.execute(seed_guards_sql())
            conn.execute(
                "INSERT INTO main.schema_version VALUES (?, ?, ?)", [version, description, datetime.now(UTC)]
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
        logger.info("warehouse schema migrated to version %d (%s)", version, description)


def ensure_schema_on(conn: duckdb.DuckDBPyConnection) -> None:
    """Migrate the file behind `conn` if it is not at `SCHEMA_VERSION` yet."""
    # One indexed read (~0.2 ms) rather than a per-process cache: a file deleted and recreated under a
    # running process (`make clean` during `make dev`) gets its schema back on the next connection.
    try:
        (version,) = conn.execute("SELECT max(version) FROM main.schema_version").fetchone() or (None,)
    except duckdb.CatalogException:
        version = None
    if version is None or version < SCHEMA_VERSION:
        _migrate(conn)
