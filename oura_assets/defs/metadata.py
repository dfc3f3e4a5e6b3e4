"""Table metadata for the assets, generated from the warehouse's one schema definition (`wh.TABLES`).

`dagster/column_schema` and `dagster/table_name` on an asset's definition fill the UI's Columns section before
any run, and because they are built from the same `Table` entries the DDL is generated from, the columns a
reader sees are the columns on disk. Dagster's `TableColumn` has no unit field: a column's unit goes at the
end of its description, where the UI shows it, and into its tags as `unit`, where a tool can read it.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from oura_assets import warehouse as wh

TABLE_NAME_KEY = "dagster/table_name"
COLUMN_SCHEMA_KEY = "dagster/column_schema"


def column_description(column: wh.Column) -> str:
    return f"{column.description} Unit: {column.unit}." if column.unit else column.description


def table_schema(table: wh.Table) -> dg.TableSchema:
    """`table` as a `dg.TableSchema`: DuckDB types, descriptions with units, NOT NULL and the primary key."""
    columns = [
        dg.TableColumn(
            name=column.name,
            type=column.type,
            description=column_description(column),
            constraints=dg.TableColumnConstraints(
                nullable=column.nullable,
                unique=table.primary_key == (column.name,),
            ),
            tags={"unit": column.unit} if column.unit else None,
        )
        for column in table.columns
    ]
    return dg.TableSchema(
        columns=columns,
        constraints=dg.TableConstraints(other=[f"primary key ({', '.join(table.primary_key)})"]),
    )


def table_metadata(table_name: str, *also: str) -> dict[str, Any]:
    """Definition metadata for an asset stored in `table_name` (qualified, e.g. `oura_raw.sleep`).

    An asset that also lands other tables names them in `tables`; its column schema is its primary table's.
    """
    unknown = [name for name in (table_name, *also) if name not in wh.TABLES]
    if unknown:
        raise KeyError(f"not warehouse tables: {', '.join(unknown)}")
    return {
        TABLE_NAME_KEY: table_name,
        COLUMN_SCHEMA_KEY: table_schema(wh.TABLES[table_name]),
        "tables": [table_name, *also],
    }
