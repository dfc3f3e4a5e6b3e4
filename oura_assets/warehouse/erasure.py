"""Erasing a patient from the warehouse, and rewriting the file so the erased bytes are gone from disk too.

Which tables hold a patient is not a list kept by hand: it is every table that has a `patient_id` column,
from `schema.TABLES` and from the file's own catalog (`information_schema`), so a table added later by a
migration, or by another part of the project, is covered without touching this module. The one exception
is `patient_graph.audit_log`, which keeps the record that the erasure happened (ids and counts, no health
data).

Deleting rows is not enough for the file's bytes. DuckDB (checked with 2.0.1) keeps deleted rows in their
blocks: after DELETE, `CHECKPOINT`, `FORCE CHECKPOINT` and `VACUUM` the erased patient's ids and documents
are still readable in the file with `grep`. Only writing the live rows into a new file does away with them,
so `compact` copies the database (`COPY FROM DATABASE`, which keeps keys, views and the schema version) into
a new file beside it and swaps it in atomically, under the writer lock, while nobody has the file open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from oura_assets.private_files import fsync_directory
from oura_assets.warehouse.audit import AuditEntry, record_audit
from oura_assets.warehouse.lake_maintenance import maintain_lake
from oura_assets.warehouse.schema import AUDIT_LOG, TABLES

if TYPE_CHECKING:
    from oura_assets.warehouse.database import Warehouse

log = logging.getLogger(__name__)

PATIENT_COLUMN = "patient_id"
KEPT_TABLES = frozenset({AUDIT_LOG.name})


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def patient_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Every base table of the file with a `patient_id` column, but the audit log; `schema.table`, sorted."""
    declared = {
        name for name, table in TABLES.items() if any(c.name == PATIENT_COLUMN for c in table.columns)
    }
    found = {
        f"{schema}.{table}"
        for schema, table in conn.execute(
            "SELECT c.table_schema, c.table_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) "
            "WHERE c.column_name = ? AND t.table_type = 'BASE TABLE' "
            "AND c.table_catalog = current_database()",
            [PATIENT_COLUMN],
        ).fetchall()
    }
    # Declared tables are in the file (migrations create them); the catalog adds whatever else holds patients.
    return sorted((declared | found) - KEPT_TABLES)


def erase_patient_rows(conn: duckdb.DuckDBPyConnection, patient_id: str) -> dict[str, int]:
    """Delete every row of `patient_id` from `patient_tables`; rows removed by table (zeros included).

    Runs on the caller's connection: inside its transaction, the erasure lands whole or not at all.
    """
    removed: dict[str, int] = {}
    for table in patient_tables(conn):
        row = conn.execute(
            f"DELETE FROM {_quoted(table)} WHERE {PATIENT_COLUMN} = ?",  # noqa: S608 (catalog names, quoted)
            [patient_id],
        ).fetchone()
        removed[table] = int(row[0]) if row else 0
    return removed


@dataclass(frozen=True)
class Compaction:
    bytes_before: int
    bytes_after: int


def compact(
    warehouse: Warehouse, timeout_s: float | None = None, audit: AuditEntry | None = None
) -> Compaction:
    """Rewrite the warehouse file with its live rows only, and swap it in atomically.

    Holds the writer lock throughout, so no process of ours reads or writes in between; the old file's
    deleted rows (an erased patient's, pruned samples) leave the disk with it. The file keeps its mode.
    `audit` (action `compact`) is appended before the copy, so no erasure can slip in between the two.
    """
    if warehouse.lake is not None:
        return _compact_lake(warehouse, audit)
    path = warehouse.path.expanduser().resolve()
    fresh = path.with_name(f".{path.name}.compact")
    wal = Path(f"{path}.wal")
    # The lock alone outlives the connection: the file is swapped only once it is closed (an encrypted
    # warehouse is detached from the process's DuckDB then), and still nobody of ours can open it meanwhile.
    with warehouse.hold("compact the warehouse file", timeout_s):
        with warehouse.connect("compact the warehouse file", timeout_s) as conn:
            before = path.stat().st_size
            for leftover in (fresh, Path(f"{fresh}.wal")):
                leftover.unlink(missing_ok=True)
            (current,) = conn.execute("SELECT current_database()").fetchone() or ("",)
            if audit is not None:
                record_audit(conn, audit)
            conn.execute("CHECKPOINT")
            warehouse.attach(conn, fresh, "oura_assets_compact")
            try:
                conn.execute(f"COPY FROM DATABASE {_quoted(current)} TO oura_assets_compact")
                conn.execute("CHECKPOINT oura_assets_compact")
            finally:
                conn.execute("DETACH oura_assets_compact")
        # Checkpointed and closed, the old file has no WAL; one left over would replay onto the new file.
        wal.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            shutil.copymode(path, fresh)
        with open(fresh, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(fresh, path)
        fsync_directory(path.parent)
    after = path.stat().st_size
    log.info("warehouse %s compacted: %d -> %d bytes", warehouse.path, before, after)
    return Compaction(before, after)


def _compact_lake(warehouse: Warehouse, audit: AuditEntry | None) -> Compaction:
    """A DuckLake's version of the rewrite: deleted rows live on in older snapshots and their files (and in
    delete files beside live ones), so every snapshot but the current one is expired, files heavy with deletes
    are rewritten and every file nobody references is deleted now (`lake_maintenance.maintain_lake`)."""
    if audit is not None:
        for attempt in warehouse.attempts("compact the lake: audit"):
            with attempt as conn:
                record_audit(conn, audit)
    done = maintain_lake(warehouse, keep_snapshots=timedelta(0))
    log.info(
        "lake %s compacted: %d -> %d bytes", warehouse.location, done.before.data_bytes, done.after.data_bytes
    )
    return Compaction(done.before.data_bytes, done.after.data_bytes)
