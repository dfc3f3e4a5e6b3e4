"""The one schema definition (`warehouse.schema.TABLES`) is what lands on disk, and reads well in the UI."""

import duckdb

from oura_assets import warehouse as wh
from oura_assets.warehouse.schema import SCHEMA_VERSION_TABLE


def test_a_fresh_file_has_exactly_the_described_tables_columns_and_keys(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    wh.Warehouse(path).ensure_schema()
    with duckdb.connect(str(path)) as conn:
        columns = conn.execute(
            "SELECT schema_name || '.' || table_name, column_name, data_type, is_nullable "
            "FROM duckdb_columns() WHERE NOT internal ORDER BY schema_name, table_name, column_index"
        ).fetchall()
        keys = conn.execute(
            "SELECT schema_name || '.' || table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY'"
        ).fetchall()
        # DuckDB reports a type by its canonical name (TIMESTAMPTZ is TIMESTAMP WITH TIME ZONE).
        described = {**wh.TABLES, SCHEMA_VERSION_TABLE.name: SCHEMA_VERSION_TABLE}
        types = {c.type for t in described.values() for c in t.columns}
        canonical = {t: conn.execute(f"SELECT typeof(CAST(NULL AS {t}))").fetchone()[0] for t in types}
    expected = [
        (table.name, c.name, canonical[c.type], c.nullable)
        for table in sorted(described.values(), key=lambda t: t.name)
        for c in table.columns
    ]
    assert sorted(columns) == sorted(expected)
    assert {table: tuple(cols) for table, cols in keys} == {
        t.name: t.primary_key for t in described.values() if t.enforce_key
    }
    assert [t.name for t in described.values() if not t.enforce_key] == ["oura_raw.heartrate"]


def test_every_column_is_described_and_figures_carry_units():
    for table in wh.TABLES.values():
        assert table.description, table.name
        assert set(table.primary_key) <= {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert column.description.strip(), f"{table.name}.{column.name}"
    stats = wh.TABLES["patient_graph.patient_wearable_daily_stats"]
    assert stats.column("total_sleep_seconds").unit == "seconds"
    assert stats.column("resting_heart_rate").unit == "bpm"
    assert stats.column("average_hrv").unit == "ms"
    assert stats.column("active_calories").unit == "kcal"
    assert stats.column("readiness_score").unit == "1-100 score"
