"""Rebuilding the normalized tables from raw, without Dagster: what lands, is counted and is reported."""

from __future__ import annotations

import logging
from datetime import date

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.rebuild import rebuild_per_patient, write_daily_stats, write_wearable_data
from oura_assets.sync import sync_patients
from oura_assets.tokens import PatientTokens, TokenCipher

START, END = date(2024, 6, 10), date(2024, 6, 12)
RUN_ID = "rebuild-run"


def land_raw(settings: Settings, patients: list[str]) -> wh.Warehouse:
    store = wh.Warehouse(settings.warehouse_path)
    oauth, cipher = OuraOAuthApp.from_settings(settings), TokenCipher(settings.token_keys)

    def client_for(patient_id: str) -> OuraClient:
        tokens = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        return OuraClient(settings.api_base_url, tokens)

    outcome = sync_patients(
        patients=patients, client_for=client_for, warehouse=store, start=START, end=END, run_id=RUN_ID
    )
    assert outcome.patients_ok == len(patients)
    return store


def test_rebuild_writes_each_patient_and_adds_the_counts_to_the_run(pipeline_env, connect_patient):
    for patient in ("patient-a", "patient-b"):
        connect_patient(patient)
    store = land_raw(pipeline_env, ["patient-a", "patient-b"])

    wearable = rebuild_per_patient(
        warehouse=store,
        table="patient_graph.wearable_data",
        write=write_wearable_data,
        start=START,
        end=END,
        run_id=RUN_ID,
    )
    stats = rebuild_per_patient(
        warehouse=store,
        table="patient_graph.patient_wearable_daily_stats",
        write=write_daily_stats,
        start=START,
        end=END,
        run_id=RUN_ID,
        patient_id="patient-b",
    )

    with store.connect("test: read") as conn:
        landed = conn.execute("SELECT count(*) FROM patient_graph.wearable_data").fetchone()[0]
        stats_patients = conn.execute(
            "SELECT DISTINCT patient_id FROM patient_graph.patient_wearable_daily_stats"
        ).fetchall()
        results = {r.patient_id: r for r in wh.sync_results_for_run(conn, RUN_ID)}
    assert wearable.patients == 2 and wearable.rows == landed > 0
    assert stats.patients == 1 and stats.rows > 0 and stats_patients == [("patient-b",)]
    assert results["patient-b"].rows["patient_graph.patient_wearable_daily_stats"] == stats.rows
    assert "patient_graph.patient_wearable_daily_stats" not in results["patient-a"].rows
    assert sum(r.rows["patient_graph.wearable_data"] for r in results.values()) == wearable.rows


def test_bad_raw_document_is_reported_and_turns_the_patient_partial(pipeline_env, connect_patient, caplog):
    connect_patient("patient-a")
    store = land_raw(pipeline_env, ["patient-a"])
    with store.transaction("test: corrupt one document") as conn:
        doc_id = conn.execute("SELECT id FROM oura_raw.daily_readiness ORDER BY day LIMIT 1").fetchone()[0]
        conn.execute(
            "UPDATE oura_raw.daily_readiness SET document = json_merge_patch(document, ?) WHERE id = ?",
            ['{"score": "high"}', doc_id],
        )
    caplog.set_level(logging.WARNING, logger="oura_assets.rebuild")
    outcome = rebuild_per_patient(
        warehouse=store,
        table="patient_graph.wearable_data",
        write=write_wearable_data,
        start=START,
        end=END,
        run_id=RUN_ID,
    )

    assert outcome.rows > 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "oura_assets.rebuild"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"patient patient-a: 1 document(s) left out: document {doc_id!r}: ")
    with store.connect("test: read result") as conn:
        (result,) = wh.sync_results_for_run(conn, RUN_ID)
    assert result.status == "partial" and [e["code"] for e in result.errors] == ["invalid_document"]
