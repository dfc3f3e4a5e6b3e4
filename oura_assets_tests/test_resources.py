"""The Dagster resources: the warehouse resource's connect / transaction, its config, and its use by the
plain code (sync, rebuild, tokens) in place of a `Warehouse`."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest

from oura_assets import rebuild
from oura_assets import warehouse as wh
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.resources import OuraResource, WarehouseResource


@pytest.fixture
def resource(tmp_path: Path) -> WarehouseResource:
    return WarehouseResource(database=str(tmp_path / "warehouse.duckdb"), lock_timeout_s=5.0)


def test_connect_opens_the_configured_file_at_the_current_schema(resource, tmp_path):
    with resource.connect("test: read") as conn:
        version = conn.execute("SELECT max(version) FROM main.schema_version").fetchone()[0]
        zone = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
    assert version == wh.SCHEMA_VERSION
    assert zone == "UTC"
    assert (tmp_path / "warehouse.duckdb").exists()


def _scratch_rows(resource: WarehouseResource) -> list[tuple]:
    with resource.connect("test: read") as conn:
        return conn.execute("SELECT x FROM main.scratch ORDER BY x").fetchall()


def test_transaction_commits_the_block(resource):
    with resource.connect("test: scratch table") as conn:
        conn.execute("CREATE TABLE main.scratch (x INTEGER)")
    with resource.transaction("test: write") as conn:
        conn.execute("INSERT INTO main.scratch VALUES (1), (2)")
    assert _scratch_rows(resource) == [(1,), (2,)]


def test_transaction_rolls_back_the_block_on_an_exception(resource):
    with resource.connect("test: scratch table") as conn:
        conn.execute("CREATE TABLE main.scratch (x INTEGER)")
    with pytest.raises(RuntimeError, match="boom"), resource.transaction("test: write then fail") as conn:
        conn.execute("INSERT INTO main.scratch VALUES (1)")
        raise RuntimeError("boom")
    assert _scratch_rows(resource) == []


def test_lock_timeout_is_config_and_a_busy_warehouse_names_the_holder(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    impatient = WarehouseResource(database=str(path), lock_timeout_s=0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with wh.Warehouse(path).connect("test: holding the lock"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(wh.WarehouseBusy, match="test: holding the lock"), impatient.connect("test: wait"):
            pass
    finally:
        release.set()
        holder.join(30)


def test_the_resource_is_what_plain_code_takes_for_a_warehouse(resource):
    # rebuild lists patients with raw data through `connect`; on an empty warehouse there are none.
    assert rebuild.patients_to_normalize(resource, date(2024, 6, 1), date(2024, 6, 2)) == []
    assert rebuild.patients_to_normalize(resource, date(2024, 6, 1), date(2024, 6, 2), "p1") == ["p1"]


def test_definitions_bind_each_resource_once_with_the_settings_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(tmp_path / "w.duckdb"))
    resources = load_defs().resources
    assert set(resources) == {"warehouse", "oura", "analytics_store"}
    assert Path(resources["analytics_store"].path) == (tmp_path / "analytics.duckdb").resolve()
    assert isinstance(resources["warehouse"], WarehouseResource)
    assert Path(resources["warehouse"].database) == (tmp_path / "w.duckdb").resolve()
    assert isinstance(resources["oura"], OuraResource)
    # Knobs only: nothing secret is resource config.
    for resource in resources.values():
        assert not {"client_secret", "token_keys", "token_key"} & set(type(resource).model_fields)
