"""Moving an existing DuckDB warehouse (plain or encrypted) into a DuckLake: `oura-assets warehouse migrate`.

Every table of `schema.TABLES` is copied in one lake transaction while the source file's writer lock is held
(so nothing writes the source meanwhile), then checked table by table: the same row count and the same
checksum (the sum of DuckDB's `hash` of every whole row, which does not depend on row order) on both sides.
The lake gets its schema from its own migrations first, so both are at `SCHEMA_VERSION`.

A target that already holds rows is left alone unless it holds exactly the source's rows (then there is
nothing to do: running the command again is harmless) or `replace` is given (its rows are deleted in the
copy's own transaction, so a failed copy leaves it as it was).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import duckdb

from oura_assets.warehouse.database import Warehouse
from oura_assets.warehouse.lake import LakeError, LakeLocation, attach_lake
from oura_assets.warehouse.schema import TABLES

_TARGET = "oura_migrate_target"


class MigrationRefused(LakeError):
    """The target lake holds other rows than the source's, and `replace` was not given."""


@dataclass(frozen=True)
class TableCheck:
    rows: int
    checksum: int


@dataclass(frozen=True)
class Migration:
    copied: bool
    """False when the target already held exactly the source's rows (nothing written)."""
    tables: dict[str, TableCheck] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(check.rows for check in self.tables.values())


def _columns(name: str) -> str:
    """The table's columns in the order `schema.TABLES` declares, so both sides hash the same tuple."""
    return ", ".join(f'"{column.name}"' for column in TABLES[name].columns)


def _checks(conn: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, TableCheck]:
    checks = {}
    for name in TABLES:
        rows, checksum = conn.execute(
            f"SELECT count(*), coalesce(sum(hash({_columns(name)})::HUGEINT), 0) FROM {catalog}.{name}"  # noqa: S608
        ).fetchone() or (0, 0)
        checks[name] = TableCheck(int(rows), int(checksum))
    return checks


def migrate_to_lake(
    source: Warehouse, target: LakeLocation, *, replace: bool = False, timeout_s: float | None = None
) -> Migration:
    """Copy every table of the DuckDB warehouse `source` into the lake `target` and check it; see the module.

    Raises `MigrationRefused` for a target holding other rows (without `replace`), and `LakeError` when the
    copy does not check out (the copy's transaction is then rolled back: nothing lands).
    """
    if source.lake is not None:
        raise LakeError(f"{source.location} is already a DuckLake: migrate copies a DuckDB file into one")
    started = time.monotonic()
    Warehouse(target).ensure_schema()  # the lake's own migrations: tables without keys, guards, version
    with source.connect("migrate the warehouse to DuckLake", timeout_s) as conn:
        (catalog,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        here = f'"{catalog}"'
        attach_lake(conn, target, _TARGET)
        try:
            wanted = _checks(conn, here)
            present = _checks(conn, _TARGET)
            if any(check.rows for check in present.values()):
                if present == wanted:
                    return Migration(False, wanted, time.monotonic() - started)
                if not replace:
                    held = sum(check.rows for check in present.values())
                    raise MigrationRefused(
                        f"the DuckLake {target} already holds {held} rows that are not this warehouse's: "
                        "pass --replace to overwrite them, or migrate into an empty catalog"
                    )
            conn.execute("BEGIN TRANSACTION")
            try:
                for name in TABLES:
                    columns = _columns(name)
                    if replace:
                        conn.execute(f"DELETE FROM {_TARGET}.{name}")  # noqa: S608 (schema constants)
                    conn.execute(
                        f"INSERT INTO {_TARGET}.{name} ({columns}) SELECT {columns} FROM {here}.{name}"  # noqa: S608
                    )
                copied = _checks(conn, _TARGET)
                wrong = {
                    name: (wanted[name], copied[name]) for name in TABLES if wanted[name] != copied[name]
                }
                if wrong:
                    raise LakeError(
                        "the copy does not match the warehouse, nothing was written: "
                        + "; ".join(f"{name}: {a.rows} rows -> {b.rows}" for name, (a, b) in wrong.items())
                    )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
            # Read again after the commit, from the lake's committed snapshot.
            landed = _checks(conn, _TARGET)
            if landed != wanted:
                raise LakeError("the committed copy does not match the warehouse: check the lake's writers")
        finally:
            conn.execute(f"DETACH {_TARGET}")
    return Migration(True, wanted, time.monotonic() - started)
