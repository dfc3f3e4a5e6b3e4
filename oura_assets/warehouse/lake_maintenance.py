"""Keeping a DuckLake's files few and its deleted rows gone: DuckLake's own maintenance functions, in order.

Each committed write to a DuckLake table adds a Parquet file (or, up to `lake.INLINING_ROW_LIMIT` rows, rows
inlined in the catalog), and a delete adds a delete file; nothing is rewritten in place, and old snapshots
keep every file they reference (time travel). A nightly run writes a few rows per patient and table, so
without maintenance the data path grows by thousands of small files a night. `maintain_lake` runs, in this
order: `ducklake_flush_inlined_data` (inlined rows into files), `ducklake_rewrite_data_files` (files with
deleted rows rewritten without them), `ducklake_merge_adjacent_files` (small files into larger ones),
`ducklake_expire_snapshots` (snapshots older than `keep_snapshots`), `ducklake_cleanup_old_files` (files no
snapshot references any more, deleted from the data path).

An erasure (GDPR art. 17) must not survive in old snapshots or files: `compact_lake` runs the same with
every snapshot but the current one expired and every unreferenced file deleted at once.

Compaction cannot share a transaction with writes, and DuckLake refuses to commit it when a writer deleted
from the same table meanwhile ("compacted it" conflicts): each step runs in `Warehouse.attempts`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from oura_assets.warehouse.database import Warehouse

log = logging.getLogger(__name__)

KEEP_SNAPSHOTS = timedelta(days=7)
"""How far back the nightly maintenance keeps snapshots (time travel, and the files they reference)."""


@dataclass(frozen=True)
class LakeFiles:
    """The data files the lake's current snapshot references: Parquet data files and delete files."""

    data_files: int
    data_bytes: int
    delete_files: int

    @property
    def files(self) -> int:
        return self.data_files + self.delete_files


@dataclass(frozen=True)
class LakeMaintenance:
    before: LakeFiles
    after: LakeFiles
    inlined_rows_flushed: int
    snapshots_expired: int
    files_deleted: int


def lake_files(conn: duckdb.DuckDBPyConnection) -> LakeFiles:
    """What the current snapshot of the lake behind `conn` references (`ducklake_table_info`)."""
    row = conn.execute(
        "SELECT coalesce(sum(file_count), 0), coalesce(sum(file_size_bytes), 0), "
        "coalesce(sum(delete_file_count), 0) FROM ducklake_table_info(current_database())"
    ).fetchone() or (0, 0, 0)
    return LakeFiles(int(row[0]), int(row[1]), int(row[2]))


def _call(warehouse: Warehouse, purpose: str, sql: str) -> int:
    """Run one maintenance call in its own transaction (retried after a conflict); returns its row count."""
    for attempt in warehouse.attempts(f"lake maintenance: {purpose}"):
        with attempt as conn:
            rows = conn.execute(sql).fetchall()
    return len(rows)


def maintain_lake(warehouse: Warehouse, keep_snapshots: timedelta = KEEP_SNAPSHOTS) -> LakeMaintenance:
    """Flush inlined rows, merge small files, rewrite files heavy with deletes, expire snapshots older than
    `keep_snapshots` and delete the files nobody references any more; returns the files before and after.

    `keep_snapshots` of zero keeps only the current snapshot and deletes every unreferenced file now (what an
    erasure needs: `compact_lake`).
    """
    if warehouse.lake is None:
        raise ValueError(f"{warehouse.location} is a DuckDB file, not a DuckLake")
    with warehouse.connect("lake maintenance: count files") as conn:
        before = lake_files(conn)
    seconds = int(keep_snapshots.total_seconds())
    flushed = 0
    for attempt in warehouse.attempts("lake maintenance: flush inlined data"):
        with attempt as conn:
            flushed = sum(
                int(rows or 0)
                for *_, rows in conn.execute(
                    "CALL ducklake_flush_inlined_data(current_database())"
                ).fetchall()
            )
    # Rewrite before merging: DuckLake merges only files without deletes, and a nightly run's window
    # replacement leaves a delete file on every file of the days it re-read (bench (g) saw the live files grow
    # from 42 to 58 when merging came first). Any file with a delete is rewritten, not only those 95% deleted
    # (DuckLake's default); that is also what an erasure needs.
    _call(
        warehouse,
        "rewrite files with deletes",
        "CALL ducklake_rewrite_data_files(current_database(), delete_threshold => 0.0)",
    )
    _call(warehouse, "merge adjacent files", "CALL ducklake_merge_adjacent_files(current_database())")
    expired = _call(
        warehouse,
        "expire snapshots",
        "CALL ducklake_expire_snapshots(current_database(), "
        f"older_than => now() - INTERVAL {seconds} SECOND)",
    )
    cleanup = "cleanup_all => true" if seconds == 0 else f"older_than => now() - INTERVAL {seconds} SECOND"
    deleted = _call(
        warehouse,
        "delete unreferenced files",
        f"CALL ducklake_cleanup_old_files(current_database(), {cleanup})",
    )
    with warehouse.connect("lake maintenance: count files") as conn:
        after = lake_files(conn)
    log.info(
        "lake %s maintained: %d -> %d files (%d inlined rows flushed, %d snapshots expired, "
        "%d files deleted)",
        warehouse.location,
        before.files,
        after.files,
        flushed,
        expired,
        deleted,
    )
    return LakeMaintenance(before, after, flushed, expired, deleted)
