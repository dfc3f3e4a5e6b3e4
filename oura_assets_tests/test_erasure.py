"""Erasing a patient (issue 9): through the API and the command, nothing of them left in any table or file.

The patients are connected through the API's real OAuth flow and synced by a real Dagster run, so every
table a patient reaches holds rows of theirs before the erasure: raw documents, normalized rows, events,
sync requests and results, OAuth states, the connection. After it, every table of the file is scanned for
the patient id (whole rows cast to text, JSON documents included), and the file's bytes are searched for the
id and for the erased patient's Oura document ids.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx
import pytest

from oura_assets import cli
from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.definitions import defs as load_defs
from oura_assets.defs.sensors import build_event_sensor
from oura_assets.oura.oauth import OuraOAuthApp, TokenSet
from oura_assets.simulator import SimulatorServer
from oura_assets.token_journal import TokenJournal, pair_fields
from oura_assets.tokens import PatientTokens, TokenCipher
from oura_assets_tests.api_support import ApiHarness, api_harness, new_key
from oura_assets_tests.conftest import pipeline_environment, simulator_config, use_pipeline_environment
from oura_assets_tests.support import UNPACED, connect_patient, failures, query, run_sync

W = "/api/patient-graph/wearables"
KEY = new_key()
START, END = date(2024, 6, 10), date(2024, 6, 13)
ERASED, KEPT = "patient-erase-7c1e", "patient-keep-52aa"


def make_api(settings: Settings, simulator: Any) -> Iterator[ApiHarness]:
    yield from api_harness(settings, simulator, KEY)


@pytest.fixture
def api(pipeline_env: Settings, simulator: Any) -> Iterator[ApiHarness]:
    yield from make_api(pipeline_env, simulator)


def sync_all(settings: Settings) -> None:
    """A real run over [START, END] for every connected patient, and the sensor tick recording its events."""
    definitions = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    result = run_sync(START, END, definitions=definitions, instance=instance, run_config=UNPACED)
    assert result.success, failures(result)
    with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
        build_event_sensor()(context)


@pytest.fixture(scope="module")
def two_synced_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """Both patients connected (the OAuth code flow, as the callback stores them) and synced once for the
    module, on its own simulator: the environment, and the data folder (warehouse, analytics snapshot,
    locks) that run left."""
    data = tmp_path_factory.mktemp("erasure") / "data"
    with SimulatorServer(simulator_config()) as simulator, pytest.MonkeyPatch.context() as env:
        environment = pipeline_environment(simulator, data / "warehouse.duckdb")
        settings = use_pipeline_environment(environment, env)
        for patient in (ERASED, KEPT):
            connect_patient(settings, patient)
        sync_all(settings)
        yield environment, data


@pytest.fixture
def two_synced(
    two_synced_template: tuple[dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A copy of the module's data folder for this test to erase from, and its settings (the module's
    simulator and token key: the copy's patients are still connected at Oura)."""
    environment, data = two_synced_template
    # No connection is open once the run is over: the folder's files are the warehouse and its snapshot.
    copy = shutil.copytree(data, tmp_path / "data")
    return use_pipeline_environment(
        {**environment, "OURA_ASSETS_WAREHOUSE": str(copy / "warehouse.duckdb")}, monkeypatch
    )


def all_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        f'"{schema}"."{table}"'
        for schema, table in query(
            conn,
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_catalog = current_database() ORDER BY ALL",
        )
    ]


def mentions(settings: Settings, needle: str) -> dict[str, int]:
    """Rows of every table (whole rows as text, JSON included) that contain `needle`, by table."""
    found = {}
    # One connection for the whole scan: the warehouse opened per table was most of this test's time.
    with wh.Warehouse.from_settings(settings).connect("test: mentions") as conn:
        for table in all_tables(conn):
            (count,) = query(
                conn,
                f"SELECT count(*) FROM {table} AS t WHERE contains(CAST(t AS VARCHAR), ?)",  # noqa: S608
                [needle],
            )[0]
            if count:
                found[table] = count
    return found


def rows_of(settings: Settings, patient_id: str) -> dict[str, list[tuple]]:
    """Every row of the patient in every table with a patient_id, volatile columns included."""
    with wh.Warehouse(settings.warehouse_path).connect("test: rows of a patient") as conn:
        return {
            table: sorted(
                conn.execute(f"SELECT * FROM {table} WHERE patient_id = ?", [patient_id]).fetchall(),  # noqa: S608
                key=repr,
            )
            for table in wh.patient_tables(conn)
        }


def document_ids(settings: Settings, patient_id: str) -> list[str]:
    return [
        document_id
        for collection in wh.DOCUMENT_COLLECTIONS
        for (document_id,) in query(
            settings,
            f"SELECT id FROM oura_raw.{collection} WHERE patient_id = ?",  # noqa: S608
            [patient_id],
        )
    ]


def files_mentioning(folder: Path, needles: list[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            found = [needle for needle in needles if needle.encode() in content]
            if found:
                hits[str(path.relative_to(folder))] = found
    return hits


def bytes_without_the_audit_log(settings: Settings, folder: Path) -> bytes:
    """The warehouse's live rows minus the audit log (which keeps the erased id by design), as file bytes."""
    import uuid

    run = uuid.uuid4().hex[:8]
    copy, bare = folder / f"copy-{run}.duckdb", folder / f"bare-{run}.duckdb"
    copy.write_bytes(settings.warehouse_path.read_bytes())
    conn = duckdb.connect(str(copy))
    conn.execute("DROP TABLE patient_graph.audit_log")
    conn.execute(f"ATTACH '{bare}' AS bare")  # DuckDB 1.5 takes no parameter for the path
    conn.execute(f'COPY FROM DATABASE "copy-{run}" TO bare')
    conn.execute("DETACH bare")
    conn.close()
    return bare.read_bytes()


def oura_user_id(settings: Settings, patient_id: str) -> str:
    (user_id,) = query(
        settings,
        "SELECT oura_user_id FROM patient_graph.wearable_connections WHERE patient_id = ?",
        [patient_id],
    )[0]
    assert user_id
    return user_id


def stored_access_token(settings: Settings, patient_id: str) -> str:
    with wh.Warehouse(settings.warehouse_path).connect("test: read tokens") as conn:
        connection = wh.get_connection(conn, patient_id)
    assert connection is not None and connection.access_token_enc
    return TokenCipher(settings.token_keys).decrypt(connection.access_token_enc)


def oura_accepts(settings: Settings, access_token: str) -> bool:
    answer = httpx.get(
        f"{settings.api_base_url}/v2/usercollection/personal_info",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    return answer.status_code == 200


def journal_a_refresh(settings: Settings, patient_id: str) -> Path:
    """A rotated pair journaled for the patient and not stored yet (as a refresh killed mid-way leaves it)."""
    cipher = TokenCipher(settings.token_keys)
    tokens = PatientTokens(
        patient_id=patient_id,
        warehouse=wh.Warehouse(settings.warehouse_path),
        cipher=cipher,
        oauth_app=OuraOAuthApp.from_settings(settings),
        lock_dir=settings.lock_dir,
        journal_dir=settings.token_journal_dir,
    )
    pair = TokenSet(
        "journaled-access", "journaled-refresh", datetime.now(UTC) + timedelta(hours=1), ("daily",)
    )
    TokenJournal(settings.token_journal_dir, cipher).write(
        tokens.journal_path.stem, {**pair_fields(pair), "replaces": "0" * 64}
    )
    assert tokens.journal_path.exists()
    return tokens.journal_path


def connect_and_sync_two(api: ApiHarness) -> None:
    api.connect(ERASED)
    api.connect(KEPT)
    sync_all(api.settings)
    for patient in (ERASED, KEPT):
        assert query(api.settings, "SELECT count(*) FROM oura_raw.heartrate WHERE patient_id = ?", [patient])[
            0
        ][0]


@pytest.mark.slow
def test_erase_through_the_api_leaves_nothing_of_the_patient_in_any_table_or_file(
    api: ApiHarness, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("bytes")
    settings = api.settings
    connect_and_sync_two(api)
    journal = journal_a_refresh(settings, ERASED)
    access_token = stored_access_token(settings, ERASED)
    ids = document_ids(settings, ERASED)
    assert ids
    ring_user_id = oura_user_id(settings, ERASED)
    populated = {table for table, rows in rows_of(settings, ERASED).items() if rows}
    # The patient reaches every kind of table before the erasure, or the scan below would prove little.
    assert {
        "oura_raw.heartrate",
        "oura_raw.daily_readiness",
        "patient_graph.wearable_data",
        "patient_graph.patient_wearable_daily_stats",
        "patient_graph.patient_events",
        "patient_graph.sync_requests",
        "patient_graph.sync_results",
        "patient_graph.oauth_states",
        "patient_graph.wearable_connections",
    } <= populated
    kept_before = rows_of(settings, KEPT)

    answer = api.call("DELETE", f"{W}/connections/oura", ERASED, params={"erase": "true"})

    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["status"] == "erased" and data["revoked"] is True and data["rowsRemoved"] > 0
    # What remains: the audit entries of their calls (connect, callback, erase), ids and outcomes only.
    assert mentions(settings, ERASED) == {'"patient_graph"."audit_log"': 3}
    assert all(mentions(settings, document_id) == {} for document_id in ids[:20])
    assert rows_of(settings, KEPT) == kept_before
    assert not journal.exists()
    assert not oura_accepts(settings, access_token)
    (erase,) = _erase_entries(settings)
    assert erase.actor == ERASED and erase.outcome == "ok" and erase.detail is not None
    assert erase.detail["totalRows"] == data["rowsRemoved"] and erase.detail["journalEntriesRemoved"] == 1

    # DuckDB keeps deleted rows in the file's blocks (even after CHECKPOINT and VACUUM): the daily
    # housekeeping job sees the pending erasure and rewrites the file without them.
    housekeeping = load_defs().resolve_job_def("health_data_housekeeping")
    result = housekeeping.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    # The audit log keeps the erased id (whose erasure it records); nothing else in the file does.
    assert files_mentioning(settings.data_dir, [ring_user_id, *ids]) == {}
    assert ERASED.encode() not in bytes_without_the_audit_log(settings, tmp_path)
    assert KEPT.encode() in bytes_without_the_audit_log(settings, tmp_path)
    assert rows_of(settings, KEPT) == kept_before
    assert query(settings, "SELECT max(version) FROM main.schema_version")[0][0] == wh.SCHEMA_VERSION


def _erase_entries(settings: Settings) -> list[wh.AuditEntry]:
    with wh.Warehouse(settings.warehouse_path).connect("test: audit") as conn:
        return wh.read_audit_log(conn, action="erase")


def test_erasing_twice_answers_success_with_nothing_removed(api: ApiHarness, warehouse_backend: str) -> None:
    api.connect(ERASED)
    first = api.call("DELETE", f"{W}/connections/oura", ERASED, params={"erase": "true"})
    second = api.call("DELETE", f"{W}/connections/oura", ERASED, params={"erase": "true"})

    assert first.status_code == 200 and first.json()["data"]["rowsRemoved"] > 0
    assert second.status_code == 200, second.text
    assert second.json()["data"] == {"source": "oura", "status": "erased", "revoked": None, "rowsRemoved": 0}
    assert [e.detail["totalRows"] > 0 for e in _erase_entries(api.settings)] == [True, False]


def test_erase_with_oura_unreachable_still_erases_locally_and_says_so(
    pipeline_env: Settings, simulator: Any
) -> None:
    unreachable = dataclasses.replace(pipeline_env, revoke_url="http://127.0.0.1:9/oauth/revoke")
    for api in make_api(unreachable, simulator):
        api.connect(ERASED)
        answer = api.call("DELETE", f"{W}/connections/oura", ERASED, params={"erase": "true"})

        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["revoked"] is False
        assert mentions(pipeline_env, ERASED) == {'"patient_graph"."audit_log"': 3}
        (erase,) = _erase_entries(pipeline_env)
        assert erase.detail is not None and erase.detail["revokedAtOura"] is False


def test_cli_erase_removes_the_patient_and_compacts_the_file(
    two_synced: Settings, capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = two_synced
    ids = document_ids(settings, ERASED)
    ring_user_id = oura_user_id(settings, ERASED)
    kept_before = rows_of(settings, KEPT)

    assert cli.main(["patient", "erase", ERASED]) == 0

    output = capsys.readouterr().out
    assert "revoked at Oura: yes" in output and "file compacted" in output
    assert mentions(settings, ERASED) == {'"patient_graph"."audit_log"': 1}
    assert files_mentioning(settings.data_dir, [ring_user_id, *ids]) == {}
    assert ERASED.encode() not in bytes_without_the_audit_log(settings, tmp_path_factory.mktemp("bytes"))
    assert rows_of(settings, KEPT) == kept_before
    (erase,) = _erase_entries(settings)
    assert erase.actor == wh.OPERATOR and erase.patient_id == ERASED and erase.status_code is None

    assert cli.main(["patient", "erase", ERASED, "--no-compact"]) == 0
    assert "rows removed: 0" in capsys.readouterr().out


def test_deleted_rows_stay_in_the_file_until_it_is_compacted(two_synced: Settings) -> None:
    """What the compaction is for (DuckDB 2.0): a committed, checkpointed DELETE leaves the bytes behind.

    If a DuckDB release ever reclaims them, this test fails and the compaction can be reconsidered. (A
    patient alone in the file does not show it: deleting every row of a table frees its row groups whole.)
    """
    pipeline_env = two_synced
    ids = document_ids(pipeline_env, ERASED)
    store = wh.Warehouse(pipeline_env.warehouse_path)
    with store.transaction("test: erase without compaction") as conn:
        wh.erase_patient_rows(conn, ERASED)
    with store.connect("test: checkpoint and vacuum") as conn:
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM")
        conn.execute("CHECKPOINT")
    # Rows deleted behind the eraser's back: the analytics snapshot, which PatientEraser rewrites, is not
    # what this test is about, so only the warehouse's own files are searched.
    snapshot = pipeline_env.analytics_path.name

    def warehouse_files_mentioning(needles: list[str]) -> dict[str, list[str]]:
        found = files_mentioning(pipeline_env.warehouse_path.parent, needles)
        return {name: hits for name, hits in found.items() if name != snapshot}

    assert warehouse_files_mentioning(ids[:5])

    wh.compact(store)

    assert warehouse_files_mentioning(ids) == {}


def test_patient_tables_cover_a_table_added_outside_the_schema(pipeline_env: Settings) -> None:
    store = wh.Warehouse(pipeline_env.warehouse_path)
    with store.transaction("test: a new table") as conn:
        conn.execute("CREATE TABLE patient_graph.future_table (patient_id VARCHAR, note VARCHAR)")
        conn.execute("INSERT INTO patient_graph.future_table VALUES (?, 'x'), ('other', 'y')", [ERASED])
        conn.execute(
            "INSERT INTO patient_graph.audit_log (audit_id, occurred_at, actor, action, patient_id, outcome, "
            "request_id) VALUES ('a1', now(), 'operator', 'connect', ?, 'ok', 'r1')",
            [ERASED],
        )
        tables = wh.patient_tables(conn)
        removed = wh.erase_patient_rows(conn, ERASED)

    assert "patient_graph.future_table" in tables and "patient_graph.audit_log" not in tables
    assert removed["patient_graph.future_table"] == 1
    assert query(pipeline_env, "SELECT patient_id FROM patient_graph.future_table") == [("other",)]
    assert query(pipeline_env, "SELECT count(*) FROM patient_graph.audit_log")[0][0] == 1
