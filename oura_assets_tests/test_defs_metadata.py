"""The assets' table metadata: generated from `wh.TABLES`, and true of the tables a fresh warehouse holds."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from oura_assets import warehouse as wh
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.analytics import SNAPSHOT_KEY
from oura_assets.defs.metadata import COLUMN_SCHEMA_KEY, TABLE_NAME_KEY, table_metadata, table_schema

PACKAGE = Path(__file__).resolve().parent.parent / "oura_assets"


@pytest.fixture
def definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    return load_defs()


def _asset_metadata(definitions: dg.Definitions) -> dict[str, dict]:
    found = {}
    for key in definitions.resolve_all_asset_keys():
        if key == SNAPSHOT_KEY:
            continue  # a DuckDB file of its own, not a warehouse table: test_analytics.py covers it
        spec = definitions.resolve_assets_def(key).specs_by_key[key]
        found[key.to_user_string()] = dict(spec.metadata)
    return found


def _columns_on_disk(path: Path) -> dict[str, list[tuple[str, bool]]]:
    """(column, nullable) per qualified table, in column order, from DuckDB's own catalog."""
    with wh.Warehouse(path).connect("test: catalog") as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name, column_name, is_nullable = 'YES' "
            "FROM information_schema.columns WHERE table_schema IN ('oura_raw', 'patient_graph') "
            "ORDER BY table_schema, table_name, ordinal_position"
        ).fetchall()
    tables: dict[str, list[tuple[str, bool]]] = {}
    for table, column, nullable in rows:
        tables.setdefault(table, []).append((column, nullable))
    return tables


def test_every_asset_names_its_table_and_its_column_schema_matches_the_table_on_disk(definitions, tmp_path):
    on_disk = _columns_on_disk(tmp_path / "warehouse.duckdb")
    metadata = _asset_metadata(definitions)
    assert len(metadata) == 14
    for asset, entries in metadata.items():
        table = entries[TABLE_NAME_KEY]
        schema = entries[COLUMN_SCHEMA_KEY]
        assert isinstance(schema, dg.TableSchema), asset
        described = [(c.name, c.constraints.nullable) for c in schema.columns]
        assert described == on_disk[table], asset
        # Every table an asset lands has the columns its schema describes.
        for other in entries["tables"]:
            assert [name for name, _ in on_disk[other]] == [c.name for c in schema.columns], (asset, other)


def test_asset_table_names_follow_the_asset_keys(definitions):
    metadata = _asset_metadata(definitions)
    assert {asset: entries[TABLE_NAME_KEY] for asset, entries in metadata.items()} == {
        "oura_raw/daily_readiness": "oura_raw.daily_readiness",
        "oura_raw/sleep": "oura_raw.sleep",
        "oura_raw/daily_activity": "oura_raw.daily_activity",
        "oura_raw/heartrate": "oura_raw.heartrate",
        **{
            f"oura_raw/{c}": f"oura_raw.{c}"
            for c in (
                "workout",
                "session",
                "daily_spo2",
                "daily_stress",
                "daily_resilience",
                "daily_cardiovascular_age",
            )
        },
        "patient_graph/wearable_data": "patient_graph.wearable_data",
        "patient_graph/patient_wearable_daily_stats": "patient_graph.patient_wearable_daily_stats",
        "patient_graph/wearable_workouts": "patient_graph.wearable_workouts",
        "patient_graph/wearable_sessions": "patient_graph.wearable_sessions",
    }
    assert metadata["oura_raw/sleep"]["tables"] == ["oura_raw.sleep", "oura_raw.daily_sleep"]


def test_column_schema_carries_descriptions_units_and_the_primary_key():
    table = wh.TABLES["patient_graph.patient_wearable_daily_stats"]
    schema = table_schema(table)
    columns = {c.name: c for c in schema.columns}
    for column in table.columns:
        assert columns[column.name].type == column.type
        assert columns[column.name].description.startswith(column.description)
    assert columns["hr_min"].tags == {"unit": "bpm"}
    assert columns["hr_min"].description.endswith("Unit: bpm.")
    assert columns["patient_id"].tags == {}
    assert columns["patient_id"].constraints.nullable is False
    assert columns["steps"].constraints.nullable is True
    assert schema.constraints.other == ["primary key (patient_id, source, day)"]
    single_key = {c.name: c for c in table_schema(wh.TABLES["patient_graph.sync_requests"]).columns}
    assert single_key["sync_id"].constraints.unique is True
    assert columns["day"].constraints.unique is False  # part of a compound key, not unique on its own


def test_table_metadata_refuses_a_table_the_warehouse_does_not_have():
    with pytest.raises(KeyError, match=r"oura_raw\.nope"):
        table_metadata("oura_raw.sleep", "oura_raw.nope")


def test_no_module_imports_dagster_internals():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "dagster._core" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
