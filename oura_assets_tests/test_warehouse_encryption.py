"""The encrypted warehouse (`OURA_ASSETS_WAREHOUSE_KEY`): no patient data in the file or its WAL, clear
one-line errors for a missing or wrong key, the key never shown, and `oura-assets warehouse rekey`."""

from __future__ import annotations

import dataclasses
import logging
import stat
import threading
from datetime import date
from pathlib import Path

import duckdb
import pytest

from oura_assets import cli
from oura_assets import warehouse as wh
from oura_assets.config import ConfigError, Settings, load_settings
from oura_assets.warehouse import encryption
from oura_assets_tests import support

START, END = date(2024, 6, 10), date(2024, 6, 12)
KEY = "warehouse-key-0123456789abcdef"
NEW_KEY = "rotated-key-fedcba9876543210"


@pytest.fixture
def encrypted_env(pipeline_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The pipeline environment with a key and a warehouse file of its own (pipeline_env's is plain)."""
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(tmp_path / "encrypted" / "warehouse.duckdb"))
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE_KEY", KEY)
    settings = load_settings(require=("oauth", "tokens"))
    wh.Warehouse.from_settings(settings).ensure_schema()
    return settings


def plain_warehouse(path: Path) -> wh.Warehouse:
    store = wh.Warehouse(path, lock_timeout_s=20)
    with store.transaction("test: plain data") as conn:
        wh.record_event(conn, patient_id="patient-plain", event_type="wearable_sync", payload={"n": 1})
    return store


def needles(settings: Settings) -> set[bytes]:
    """What must not be readable in the file: patient ids, Oura document ids, score-bearing JSON."""
    found = support.query(
        settings,
        "SELECT DISTINCT patient_id FROM patient_graph.wearable_data "
        "UNION SELECT DISTINCT id FROM oura_raw.daily_readiness "
        "UNION SELECT DISTINCT id FROM oura_raw.sleep "
        "UNION SELECT DISTINCT '\"score\":' || (metrics->>'score') FROM patient_graph.wearable_data "
        "WHERE (metrics->>'score') IS NOT NULL",
    )
    return {value.encode() for (value,) in found}


def visible(data: bytes, wanted: set[bytes]) -> set[bytes]:
    return {needle for needle in wanted if needle in data}


@pytest.mark.slow
def test_encrypted_warehouse_file_and_wal_hold_no_patient_data_and_the_key_is_never_logged(
    encrypted_env: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for n in range(2):
        support.connect_patient(encrypted_env, f"patient-enc-{n}")
    result = support.run_sync(START, END, run_config=support.UNPACED)
    assert result.success, support.failures(result)
    wanted = needles(encrypted_env)
    assert {b"patient-enc-0", b"patient-enc-1"} <= wanted and len(wanted) > 5
    path = encrypted_env.warehouse_path
    store = wh.Warehouse.from_settings(encrypted_env)

    # Control: the same data copied into a plain DuckDB file is greppable, so the grep below can fail.
    control = tmp_path / "control.duckdb"
    with store.connect("test: plain control copy") as conn:
        wh.attach(conn, control, "control", None)
        conn.execute(
            "COPY FROM DATABASE " + conn.execute("SELECT current_database()").fetchone()[0] + " TO control"
        )
        conn.execute("DETACH control")
    seen_in_plain = visible(control.read_bytes(), wanted)
    assert {b"patient-enc-0", b"patient-enc-1"} <= seen_in_plain and len(seen_in_plain) > 5

    with store.connect("test: a write left in the WAL") as conn:
        wh.record_event(conn, patient_id="patient-enc-wal", event_type="wearable_sync", payload={"n": 1})
        wal = path.with_name(path.name + ".wal")
        assert wal.exists() and wal.stat().st_size > 0
        assert visible(wal.read_bytes(), {*wanted, b"patient-enc-wal"}) == set()
        assert visible(path.read_bytes(), wanted) == set()
        conn.execute("CHECKPOINT")
        assert visible(path.read_bytes(), {*wanted, b"patient-enc-wal"}) == set()
    assert visible(path.read_bytes(), {*wanted, b"patient-enc-wal"}) == set()
    assert not wal.exists() or visible(wal.read_bytes(), {*wanted, b"patient-enc-wal"}) == set()

    # Control for the WAL: a plain warehouse's WAL shows what was written.
    plain = plain_warehouse(tmp_path / "plain.duckdb")
    with plain.connect("test: plain WAL") as conn:
        wh.record_event(conn, patient_id="patient-in-plain-wal", event_type="wearable_sync", payload={})
        assert b"patient-in-plain-wal" in (tmp_path / "plain.duckdb.wal").read_bytes()

    assert KEY not in caplog.text
    assert all(KEY not in text for text in support.failures(result))
    assert KEY not in repr(encrypted_env) and KEY not in repr(store)
    with pytest.raises(duckdb.Error, match="without a key"):
        duckdb.connect(str(path)).close()  # DuckDB alone refuses the file...
    with pytest.raises(wh.WarehouseKeyError, match="OURA_ASSETS_WAREHOUSE_KEY"):
        wh.Warehouse(path).ensure_schema()  # ...and so do we, in one line


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (None, "is encrypted: set OURA_ASSETS_WAREHOUSE_KEY"),
        ("wrong-key-0123456789abcdef", "is not the key of"),
    ],
    ids=["missing-key", "wrong-key"],
)
def test_missing_or_wrong_key_is_one_line_without_the_key(tmp_path: Path, key: str | None, fragment: str):
    path = tmp_path / "warehouse.duckdb"
    wh.Warehouse(path, key=KEY).ensure_schema()
    for read_only in (False, True):
        with pytest.raises(wh.WarehouseKeyError) as raised, wh.open_database(path, key, read_only=read_only):
            pass
        message = str(raised.value)
        assert fragment in message and "\n" not in message and KEY not in message
        assert key is None or key not in message
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
    with pytest.raises(wh.WarehouseKeyError, match=fragment):
        wh.Warehouse(path, key=key).ensure_schema()


def test_a_key_for_a_plain_warehouse_says_how_to_encrypt_it(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    plain_warehouse(path)
    with pytest.raises(wh.NotEncrypted, match="oura-assets warehouse rekey") as raised:
        wh.Warehouse(path, key=KEY).ensure_schema()
    assert KEY not in str(raised.value)


def test_a_reader_with_the_key_opens_read_only_without_httpfs(tmp_path: Path):
    path = tmp_path / "snapshot.duckdb"
    with wh.open_database(path, KEY) as conn:
        conn.execute("CREATE TABLE main.t AS SELECT 'patient-snap' AS patient_id")
    assert b"patient-snap" not in path.read_bytes()
    with wh.open_database(path, KEY, read_only=True) as conn:
        assert conn.execute("SELECT patient_id FROM main.t").fetchall() == [("patient-snap",)]
        loaded = conn.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'")
        assert loaded.fetchone() == (False,)
        with pytest.raises(duckdb.Error):
            conn.execute("INSERT INTO main.t VALUES ('x')")
    assert wh.is_encrypted(path) and not wh.is_encrypted(plain_warehouse(tmp_path / "p.duckdb").path)


def test_writing_without_httpfs_anywhere_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(encryption, "httpfs_wheel_file", lambda: None)
    conn = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    conn.execute(f"SET extension_directory = '{tmp_path / 'no-extensions'}'")
    with pytest.raises(wh.WarehouseKeyError, match="needs the httpfs extension") as raised:
        wh.attach(conn, tmp_path / "w.duckdb", "w", KEY)
    assert "\n" not in str(raised.value)
    conn.close()


def test_the_wheel_extension_is_found_for_this_duckdb():
    wheel = encryption.httpfs_wheel_file()
    assert wheel is not None and f"v{duckdb.__version__}" in str(wheel)


@pytest.mark.slow
def test_rekey_rotates_the_key_and_keeps_every_row(encrypted_env: Settings):
    support.connect_patient(encrypted_env, "patient-rekey")
    result = support.run_sync(START, END, run_config=support.UNPACED)
    assert result.success, support.failures(result)
    before = support.snapshot(encrypted_env)
    store = wh.Warehouse.from_settings(encrypted_env)
    stale = encrypted_env.warehouse_path.with_name(f".{encrypted_env.warehouse_path.name}.rekey")
    stale.write_bytes(b"half a copy left by a crash")

    outcome = wh.rekey(store, KEY, NEW_KEY)

    assert outcome.was_encrypted and outcome.rows > 0 and not stale.exists()
    with pytest.raises(wh.WarehouseKeyError, match="wrong key"):
        store.ensure_schema()
    rotated = dataclasses.replace(encrypted_env, warehouse_key=NEW_KEY)
    assert support.snapshot(rotated) == before
    with wh.Warehouse.from_settings(rotated).transaction("test: write after rekey") as conn:
        wh.record_event(conn, patient_id="patient-rekey", event_type="wearable_sync", payload={"n": 2})
    assert b"patient-rekey" not in encrypted_env.warehouse_path.read_bytes()


def test_rekey_command_encrypts_a_plain_warehouse_with_the_configured_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "warehouse.duckdb"
    before = support.snapshot(plain_warehouse(path).path, tables=["patient_graph.patient_events"])
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    monkeypatch.delenv("OURA_ASSETS_WAREHOUSE_NEW_KEY", raising=False)
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(path))
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE_KEY", KEY)

    assert cli.main(["warehouse", "rekey"]) == 0

    out = capsys.readouterr().out
    assert "encrypted with the new key" in out and KEY not in out
    assert wh.is_encrypted(path) and b"patient-plain" not in path.read_bytes()
    with wh.Warehouse(path, key=KEY).connect("test: read") as conn:
        assert support.snapshot(conn, tables=["patient_graph.patient_events"]) == before

    # Once encrypted, a second run needs a new key and says where to give it.
    assert cli.main(["warehouse", "rekey"]) == 2
    assert "OURA_ASSETS_WAREHOUSE_NEW_KEY" in capsys.readouterr().err
    key_file = tmp_path / "new.key"
    key_file.write_text(NEW_KEY + "\n")
    assert cli.main(["warehouse", "rekey", "--new-key-file", str(key_file)]) == 0
    with wh.Warehouse(path, key=NEW_KEY).connect("test: read") as conn:
        assert support.snapshot(conn, tables=["patient_graph.patient_events"]) == before


def test_rekey_command_in_demo_mode_updates_the_generated_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    for name in ("OURA_ASSETS_WAREHOUSE_KEY", "OURA_ASSETS_WAREHOUSE_NEW_KEY", "OURA_ASSETS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OURA_ASSETS_DEMO", "1")
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    old = load_settings()
    wh.Warehouse.from_settings(old).ensure_schema()
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE_NEW_KEY", NEW_KEY)

    assert cli.main(["warehouse", "rekey"]) == 0

    assert load_settings().warehouse_key == NEW_KEY != old.warehouse_key
    assert stat.S_IMODE((tmp_path / "demo-warehouse-key").stat().st_mode) == 0o600
    assert not (tmp_path / "demo-warehouse-key.new").exists()
    wh.Warehouse.from_settings(load_settings()).ensure_schema()
    assert NEW_KEY not in capsys.readouterr().out


def test_rekey_waits_for_the_writer_lock_and_gives_up_leaving_the_file_as_it_was(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    store = wh.Warehouse(path, key=KEY)
    store.ensure_schema()
    before = path.read_bytes()
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with wh.Warehouse(path, key=KEY).connect("test: a long run writing"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        with pytest.raises(wh.WarehouseBusy, match="a long run writing"):
            wh.rekey(store, KEY, NEW_KEY, timeout_s=0.3)
    finally:
        release.set()
        thread.join()
    assert path.read_bytes() == before
    store.ensure_schema()


def test_demo_mode_generates_a_private_warehouse_key_and_a_short_key_is_refused(tmp_path: Path):
    env = {"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}
    first, again = load_settings(env), load_settings(env)
    assert first.warehouse_key and first.warehouse_key == again.warehouse_key
    assert stat.S_IMODE((tmp_path / "demo-warehouse-key").stat().st_mode) == 0o600
    assert first.warehouse_key not in repr(first)
    assert load_settings({"OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}).warehouse_key is None
    with pytest.raises(ConfigError, match="at least 16 characters") as raised:
        load_settings({**env, "OURA_ASSETS_WAREHOUSE_KEY": "short-secret"})
    assert "short-secret" not in str(raised.value)
