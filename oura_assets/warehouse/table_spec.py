"""How a warehouse table is described: `Column` and `Table`, from which the DDL is generated, and the key
columns most tables share.

`schema.py` describes every table with these (`TABLES`), `schema_collections.py` the tables of the newer
collections; kept apart so both can use them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    unit: str | None = None
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    """Qualified: `schema.table`."""
    description: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    enforce_key: bool = True
    """False: the DuckDB file holds no PRIMARY KEY for this table either, as a DuckLake holds none. Its
    writers keep the key unique (one writer at a time holds a DuckDB file, and every write replaces a window
    by deleting it first), and the run's quality check looks for duplicate keys in what the run wrote."""

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")

    def ddl(self, *, keys: bool = True, name: str | None = None) -> str:
        """`CREATE TABLE IF NOT EXISTS` for this table, columns in their declared order.

        `keys=False` leaves out the PRIMARY KEY, for a DuckLake (which has none: the writers keep the key
        unique themselves, see `dialect.py`); a table with `enforce_key=False` never has one.
        `name` creates it under another name (a migration rebuilding the table).
        """
        lines = [f"{c.name} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in self.columns]
        if keys and self.enforce_key:
            lines.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        body = ",\n    ".join(lines)
        return f"CREATE TABLE IF NOT EXISTS {name or self.name} (\n    {body}\n)"


def required(name: str, type_: str, description: str, unit: str | None = None) -> Column:
    """A NOT NULL column."""
    return Column(name, type_, description, unit, nullable=False)


PATIENT_ID_COLUMN = required(
    "patient_id", "VARCHAR", "The patient: the `sub` of their JWT, our key everywhere."
)
SOURCE_COLUMN = required("source", "VARCHAR", "The wearable's source; always `oura`.")
DAY_COLUMN = required("day", "DATE", "Oura's `day`: the patient's local calendar date the data belongs to.")
