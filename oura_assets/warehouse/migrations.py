"""Bringing a DuckDB file to the current schema: numbered migrations, recorded in `main.schema_version`.

Every connection checks the file's version (one indexed read) and migrates it when it is behind, so a file
created by an older release, or deleted and recreated under a running process, is never used as it is.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

import duckdb

from oura_assets.warehouse.schema import AUDIT_LOG, RETENTION_HORIZONS, SCHEMA_VERSION_TABLE, SCHEMAS, TABLES

logger = logging.getLogger(__name__)

# Migration 1 creates the tables as `schema.TABLES` describes them today. A later change to a table keeps
# that description current (so fresh files and the UI see it) and adds a migration that brings a file at
# an older version to it (ALTER TABLE … ADD COLUMN IF NOT EXISTS, which is a no-op on a fresh file).
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "initial schema: CONTRACT §5 tables and the project's bookkeeping tables",
        (
            *(f"CREATE SCHEMA IF NOT EXISTS {schema}" for schema in SCHEMAS),
            *(table.ddl() for table in TABLES.values()),
        ),
    ),
    (
        2,
        "health-data duties: the append-only audit log and the raw-data retention horizons",
        (AUDIT_LOG.ddl(), RETENTION_HORIZONS.ddl()),
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def _migrate(conn: duckdb.DuckDBPyConnection) -> None:
    """Apply the migrations newer than the file's `main.schema_version`, each in its own transaction."""
    conn.execute(SCHEMA_VERSION_TABLE.ddl())
    (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM main.schema_version").fetchone() or (0,)
    for version, description, statements in _MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO main.schema_version VALUES (?, ?, ?)", [version, description, datetime.now(UTC)]
            )
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
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
