"""Tokens at rest and the refresh under lock: encryption and key rotation, refresh only when needed, the
new pair stored before use, invalid_grant flagged once, the encrypted journal when the warehouse refuses the
write, and several processes refreshing the same patient spending the refresh token exactly once."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import filelock
import pytest
from cryptography.fernet import Fernet

from oura_assets import tokens as tokens_module
from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp, RefreshRejected, TokenEndpointError, TokenSet
from oura_assets.tokens import (
    PatientTokens,
    ReconnectRequired,
    TokenCipher,
    TokenDecryptError,
    TokenStoreError,
)
from oura_assets_tests import support

PATIENT = "user_2abcPatientSub"
SCOPES = ("email", "personal", "daily", "heartrate")


class FileBackedOAuth:
    """A fake Oura token endpoint whose state lives in a file, so several processes share one Oura.

    Refresh tokens are single use like Oura's: spending one rotates the pair, spending it again is
    `invalid_grant`. Every call is logged to `calls.jsonl`.
    """

    def __init__(self, state_dir: Path, *, delay_s: float = 0.0) -> None:
        self.state_dir = Path(state_dir)
        self.delay_s = delay_s
        self.state_path = self.state_dir / "oura-state.json"
        self.calls_path = self.state_dir / "calls.jsonl"

    def start(self, refresh_token: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps({"valid": refresh_token, "generation": 1}))

    def calls(self) -> list[str]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line)["refresh_token"] for line in self.calls_path.read_text().splitlines()]

    def refresh(self, refresh_token: str, *, fallback_scopes: Sequence[str] | None = None) -> TokenSet:
        with filelock.FileLock(self.state_dir / "oura.lock"):
            with self.calls_path.open("a") as log:
                log.write(json.dumps({"refresh_token": refresh_token, "pid": os.getpid()}) + "\n")
            time.sleep(self.delay_s)
            state = json.loads(self.state_path.read_text())
            if refresh_token != state["valid"]:
                raise RefreshRejected(
                    "Oura refused the refresh (invalid_grant, HTTP 400)", error="invalid_grant"
                )
            generation = state["generation"] + 1
            state.update(valid=f"refresh-{generation}", generation=generation)
            self.state_path.write_text(json.dumps(state))
        return TokenSet(
            access_token=f"access-{generation}",
            refresh_token=f"refresh-{generation}",
            expires_at=datetime.now(UTC) + timedelta(days=1),
            scopes=tuple(fallback_scopes or ()),
        )


@pytest.fixture(autouse=True)
def _forget_refused_tokens() -> None:
    tokens_module._REFUSED_REFRESH_TOKENS.clear()


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def store(tmp_path: Path) -> wh.Warehouse:
    warehouse = wh.Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=10)
    warehouse.ensure_schema()
    return warehouse


@pytest.fixture
def oura(tmp_path: Path) -> FileBackedOAuth:
    fake = FileBackedOAuth(tmp_path / "oura")
    fake.start("refresh-1")
    return fake


def connect(store: wh.Warehouse, cipher: TokenCipher, *, expires_in: timedelta, generation: int = 1) -> None:
    with store.transaction("test: connect") as conn:
        wh.upsert_connection(
            conn,
            PATIENT,
            oura_user_id="oura-user",
            scopes=SCOPES,
            access_token_enc=cipher.encrypt(f"access-{generation}"),
            refresh_token_enc=cipher.encrypt(f"refresh-{generation}"),
            expires_at=datetime.now(UTC) + expires_in,
            connected_at=datetime.now(UTC),
        )


def stored_pair(store: wh.Warehouse, cipher: TokenCipher) -> tuple[str, str, str]:
    with store.connect("test: read") as conn:
        record = wh.get_connection(conn, PATIENT)
    assert record is not None and record.access_token_enc and record.refresh_token_enc
    return cipher.decrypt(record.access_token_enc), cipher.decrypt(record.refresh_token_enc), record.status


def source_for(
    store: wh.Warehouse, key: str, oura: FileBackedOAuth, lock_dir: Path, **kwargs: object
) -> PatientTokens:
    return PatientTokens(
        patient_id=PATIENT,
        warehouse=store,
        cipher=TokenCipher([key]),
        oauth_app=oura,
        lock_dir=lock_dir,
        **kwargs,  # type: ignore[arg-type]
    )


def test_cipher_round_trip_hides_plaintext(key: str) -> None:
    cipher = TokenCipher([key])
    sealed = cipher.encrypt("access-secret-value")
    assert "access-secret-value" not in sealed
    assert cipher.decrypt(sealed) == "access-secret-value"
    assert cipher.decrypt(sealed.encode()) == "access-secret-value"
    assert key not in repr(cipher)


def test_cipher_key_rotation_newest_first(key: str) -> None:
    old = TokenCipher([key])
    new_key = Fernet.generate_key().decode()
    rotating = TokenCipher([new_key, key])
    sealed_old = old.encrypt("refresh-secret")
    assert rotating.decrypt(sealed_old) == "refresh-secret"
    rotated = rotating.rotate(sealed_old)
    assert TokenCipher([new_key]).decrypt(rotated) == "refresh-secret"
    assert TokenCipher([new_key]).decrypt(rotating.encrypt("x")) == "x"
    with pytest.raises(TokenDecryptError) as caught:
        TokenCipher([new_key]).decrypt(sealed_old)
    assert "refresh-secret" not in str(caught.value)
    with pytest.raises(ValueError):
        TokenCipher([])


def test_fresh_token_is_used_without_refreshing(store, key, oura, tmp_path) -> None:
    connect(store, TokenCipher([key]), expires_in=timedelta(hours=10))
    source = source_for(store, key, oura, tmp_path / "locks")
    assert source.get() == "access-1"
    assert source.get() == "access-1"
    assert oura.calls() == []


def test_expiring_token_is_refreshed_and_new_pair_stored_encrypted(store, key, oura, tmp_path) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=4))
    source = source_for(store, key, oura, tmp_path / "locks")
    assert source.get() == "access-2"
    assert oura.calls() == ["refresh-1"]
    assert stored_pair(store, cipher) == ("access-2", "refresh-2", "active")
    assert source.get() == "access-2" and len(oura.calls()) == 1
    with store.connect("test: scopes") as conn:
        record = wh.get_connection(conn, PATIENT)
    assert record is not None and record.scopes == SCOPES


def test_warehouse_file_holds_no_plaintext_token(store, key, oura, tmp_path) -> None:
    connect(store, TokenCipher([key]), expires_in=timedelta(minutes=1))
    source_for(store, key, oura, tmp_path / "locks").get()
    raw = store.path.read_bytes()
    for secret in (b"access-1", b"refresh-1", b"access-2", b"refresh-2"):
        assert secret not in raw


def test_force_refresh_uses_a_pair_another_process_already_rotated(store, key, oura, tmp_path) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(hours=10))
    source = source_for(store, key, oura, tmp_path / "locks")
    assert source.get() == "access-1"
    # Another process refreshed meanwhile and stored generation 2.
    oura.refresh("refresh-1")
    connect(store, cipher, expires_in=timedelta(hours=10), generation=2)
    assert source.force_refresh("access-1") == "access-2"
    assert oura.calls() == ["refresh-1"]


def test_force_refresh_of_the_stored_token_spends_the_refresh_token(store, key, oura, tmp_path) -> None:
    connect(store, TokenCipher([key]), expires_in=timedelta(hours=10))
    source = source_for(store, key, oura, tmp_path / "locks")
    assert source.force_refresh(source.get()) == "access-2"
    assert oura.calls() == ["refresh-1"]


def test_fault_refresh_rejected_flags_reconnect_once_without_retry_storm(store, key, oura, tmp_path) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    oura.start("refresh-somebody-else")
    source = source_for(store, key, oura, tmp_path / "locks")
    with pytest.raises(ReconnectRequired, match="reconnect"):
        source.get()
    assert len(oura.calls()) == 1
    with store.connect("test: read") as conn:
        record = wh.get_connection(conn, PATIENT)
        events = conn.execute(
            "SELECT event_type, payload FROM patient_graph.patient_events WHERE patient_id = ?", [PATIENT]
        ).fetchall()
    assert record is not None and record.status == "reconnect_required"
    assert record.last_error and "invalid_grant" in record.last_error
    assert [e[0] for e in events] == ["wearable_reconnect_required"]
    for _ in range(3):
        with pytest.raises(ReconnectRequired):
            source.get()
        with pytest.raises(ReconnectRequired):
            source.force_refresh("access-1")
        with pytest.raises(ReconnectRequired):
            source_for(store, key, oura, tmp_path / "locks").get()
    assert len(oura.calls()) == 1


def test_fault_refused_token_in_this_process_is_not_sent_again_even_if_flag_was_lost(
    store, key, oura, tmp_path
) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    oura.start("refresh-somebody-else")
    with pytest.raises(ReconnectRequired):
        source_for(store, key, oura, tmp_path / "locks").get()
    # The status write was lost (say, the warehouse was busy): the connection still looks active.
    with store.transaction("test: undo status") as conn:
        wh.set_connection_status(conn, PATIENT, "active")
    with pytest.raises(ReconnectRequired):
        source_for(store, key, oura, tmp_path / "locks").get()
    assert len(oura.calls()) == 1


def test_other_token_endpoint_failures_propagate_without_flagging(store, key, tmp_path) -> None:
    class Down:
        def refresh(self, refresh_token: str, *, fallback_scopes: Sequence[str] | None = None) -> TokenSet:
            raise TokenEndpointError("Oura's token endpoint answered 503 to the refresh", status=503)

    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    source = PatientTokens(PATIENT, store, cipher, Down(), tmp_path / "locks")
    with pytest.raises(TokenEndpointError):
        source.get()
    assert stored_pair(store, cipher)[2] == "active"


def test_missing_or_disconnected_connection_needs_reconnect(store, key, oura, tmp_path) -> None:
    source = source_for(store, key, oura, tmp_path / "locks")
    with pytest.raises(ReconnectRequired, match="no Oura connection"):
        source.get()
    connect(store, TokenCipher([key]), expires_in=timedelta(hours=1))
    with store.transaction("test: disconnect") as conn:
        wh.delete_tokens(conn, PATIENT)
    with pytest.raises(ReconnectRequired, match="disconnected"):
        source_for(store, key, oura, tmp_path / "locks").get()
    assert oura.calls() == []


def test_undecryptable_tokens_are_a_store_error(store, key, oura, tmp_path) -> None:
    connect(store, TokenCipher([Fernet.generate_key().decode()]), expires_in=timedelta(hours=1))
    with pytest.raises(TokenStoreError, match="OURA_ASSETS_TOKEN_KEY"):
        source_for(store, key, oura, tmp_path / "locks").get()


def test_lock_and_journal_names_do_not_contain_the_patient_id(store, key, oura, tmp_path) -> None:
    connect(store, TokenCipher([key]), expires_in=timedelta(minutes=1))
    source = source_for(store, key, oura, tmp_path / "locks")
    source.get()
    names = [p.name for p in (tmp_path / "locks").iterdir()]
    assert names and all(PATIENT not in name for name in names)
    assert PATIENT not in source.journal_path.name


def break_save_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    attempts: list[int] = []

    def failing(*args: object, **kwargs: object) -> bool:
        attempts.append(1)
        raise duckdb.IOException("disk I/O error")

    monkeypatch.setattr(wh, "save_tokens", failing)
    return attempts


def test_fault_store_fails_after_rotation_pair_goes_to_encrypted_journal(
    store, key, oura, tmp_path, monkeypatch
) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    attempts = break_save_tokens(monkeypatch)
    source = source_for(store, key, oura, tmp_path / "locks", persist_attempts=3, persist_backoff_s=0.001)
    assert source.get() == "access-2"
    assert len(attempts) == 3
    journal = source.journal_path
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    content = journal.read_text()
    assert "access-2" not in content and "refresh-2" not in content
    assert json.loads(cipher.decrypt(content))["refresh_token"] == "refresh-2"
    assert stored_pair(store, cipher)[:2] == ("access-1", "refresh-1")

    # The next process applies the journal instead of spending the dead refresh-1.
    monkeypatch.undo()
    fresh = source_for(store, key, oura, tmp_path / "locks")
    assert fresh.get() == "access-2"
    assert stored_pair(store, cipher)[:2] == ("access-2", "refresh-2")
    assert not journal.exists()
    assert oura.calls() == ["refresh-1"]


def test_fault_journal_used_while_warehouse_still_refuses_writes(
    store, key, oura, tmp_path, monkeypatch
) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    break_save_tokens(monkeypatch)
    source_for(store, key, oura, tmp_path / "locks", persist_attempts=1).get()
    second = source_for(store, key, oura, tmp_path / "locks", persist_attempts=1)
    assert second.get() == "access-2"
    assert second.journal_path.exists()
    assert oura.calls() == ["refresh-1"]


def test_stale_journal_is_discarded_after_a_reconnect(store, key, oura, tmp_path, monkeypatch) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))
    break_save_tokens(monkeypatch)
    source = source_for(store, key, oura, tmp_path / "locks", persist_attempts=1)
    source.get()
    monkeypatch.undo()
    connect(store, cipher, expires_in=timedelta(hours=5), generation=7)  # the patient reconnected
    assert source_for(store, key, oura, tmp_path / "locks").get() == "access-7"
    assert not source.journal_path.exists()
    assert stored_pair(store, cipher)[:2] == ("access-7", "refresh-7")


def test_disconnect_during_refresh_is_not_undone(store, key, tmp_path) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(minutes=1))

    class DisconnectingOura:
        def refresh(self, refresh_token: str, *, fallback_scopes: Sequence[str] | None = None) -> TokenSet:
            with store.transaction("test: patient disconnects") as conn:
                wh.delete_tokens(conn, PATIENT)
            return TokenSet("access-2", "refresh-2", datetime.now(UTC) + timedelta(days=1), SCOPES)

    source = PatientTokens(PATIENT, store, cipher, DisconnectingOura(), tmp_path / "locks")
    with pytest.raises(ReconnectRequired, match="removed"):
        source.get()
    with store.connect("test: read") as conn:
        record = wh.get_connection(conn, PATIENT)
    assert record is not None and record.status == "disconnected" and record.access_token_enc is None
    assert not source.journal_path.exists()


def _race_get(source: PatientTokens, barrier: object, results: object) -> None:
    """In a child process: wait for the other workers, then report `source.get()` (or its error)."""
    barrier.wait()  # type: ignore[attr-defined]
    try:
        results.put(source.get())  # type: ignore[attr-defined]
    except Exception as exc:
        results.put(f"error: {type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def _race_in_processes(
    target: Callable[..., None], args: tuple[Any, ...], workers: int
) -> tuple[list[str], list[int | None]]:
    """Run `target(*args, barrier, results)` in `workers` spawned processes released together by the barrier:
    their answers (in arrival order) and exit codes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=target, args=(*args, barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return answers, [process.exitcode for process in processes]


def _get_in_child(
    db_path: str, lock_dir: str, key: str, state_dir: str, barrier: object, results: object
) -> None:
    store = wh.Warehouse(db_path, lock_timeout_s=60)
    source = PatientTokens(
        PATIENT, store, TokenCipher([key]), FileBackedOAuth(Path(state_dir), delay_s=0.05), lock_dir
    )
    _race_get(source, barrier, results)


@pytest.mark.slow
def test_processes_refreshing_the_same_patient_spend_the_refresh_token_once(
    store, key, oura, tmp_path
) -> None:
    cipher = TokenCipher([key])
    connect(store, cipher, expires_in=timedelta(seconds=-10))
    workers = 4
    args = (str(store.path), str(tmp_path / "locks"), key, str(oura.state_dir))
    answers, exit_codes = _race_in_processes(_get_in_child, args, workers)
    assert exit_codes == [0] * workers
    assert answers == ["access-2"] * workers
    assert oura.calls() == ["refresh-1"]
    assert stored_pair(store, cipher) == ("access-2", "refresh-2", "active")


def settings_source(settings: Settings) -> PatientTokens:
    return PatientTokens(
        patient_id=PATIENT,
        warehouse=wh.Warehouse(settings.warehouse_path),
        cipher=TokenCipher(settings.token_keys),
        oauth_app=OuraOAuthApp.from_settings(settings),
        lock_dir=settings.lock_dir,
    )


def test_sim_401_refreshes_stores_and_retries(simulator, pipeline_env) -> None:
    first = support.connect_patient(pipeline_env, PATIENT, "ivy", learn_oura_user_id=False).tokens
    simulator.control.set_user_faults("ivy", expire_access_tokens=True)
    client = OuraClient(pipeline_env.api_base_url, settings_source(pipeline_env))
    assert client.personal_info()["id"]
    access, refresh, status = stored_pair(
        wh.Warehouse(pipeline_env.warehouse_path), TokenCipher(pipeline_env.token_keys)
    )
    assert status == "active" and access != first.access_token and refresh != first.refresh_token
    stats = simulator.control.stats()
    assert (stats["refresh_grants"], stats["spent_refresh_reuse"]) == (1, 0)
    assert stats["requests"]["GET /v2/usercollection/personal_info"] == {"200": 1, "401": 1}


def test_sim_fault_refresh_reject_flags_reconnect_and_stops_asking(simulator, pipeline_env) -> None:
    support.connect_patient(pipeline_env, PATIENT, "jack", learn_oura_user_id=False)
    simulator.control.set_user_faults("jack", expire_access_tokens=True, refresh_reject=True)
    client = OuraClient(pipeline_env.api_base_url, settings_source(pipeline_env))
    with pytest.raises(ReconnectRequired):
        client.documents("daily_sleep", date(2024, 6, 10), date(2024, 6, 11))
    token_posts = simulator.control.stats()["requests"]["POST /oauth/token"]
    for _ in range(3):
        with pytest.raises(ReconnectRequired):
            client.documents("sleep", date(2024, 6, 10), date(2024, 6, 11))
        with pytest.raises(ReconnectRequired):
            OuraClient(pipeline_env.api_base_url, settings_source(pipeline_env)).personal_info()
    stats = simulator.control.stats()
    assert stats["requests"]["POST /oauth/token"] == token_posts
    assert stats["refresh_rejected"] == 1
    with wh.Warehouse(pipeline_env.warehouse_path).connect("test: read") as conn:
        record = wh.get_connection(conn, PATIENT)
        events = conn.execute(
            "SELECT count(*) FROM patient_graph.patient_events WHERE event_type = ?",
            [tokens_module.RECONNECT_EVENT],
        ).fetchone()
    assert record is not None and record.status == "reconnect_required"
    assert events == (1,)


def _sim_get_in_child(env: dict[str, str], barrier: object, results: object) -> None:
    settings = load_settings(env, require=("oauth", "tokens"))
    _race_get(settings_source(settings), barrier, results)


@pytest.mark.slow
def test_sim_processes_refreshing_the_same_patient_spend_the_refresh_token_once(
    simulator, pipeline_env
) -> None:
    support.connect_patient(
        pipeline_env,
        PATIENT,
        "kate",
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
        learn_oura_user_id=False,
    )
    env = {k: v for k, v in os.environ.items() if k.startswith(("OURA_", "CLERK_"))}
    answers, _ = _race_in_processes(_sim_get_in_child, (env,), workers=4)
    assert len(set(answers)) == 1 and not answers[0].startswith("error"), answers
    stats = simulator.control.stats()
    assert (stats["refresh_grants"], stats["spent_refresh_reuse"]) == (1, 0)
    cipher = TokenCipher(pipeline_env.token_keys)
    assert stored_pair(wh.Warehouse(pipeline_env.warehouse_path), cipher)[0] == answers[0]


def test_sim_full_flow_logs_no_token_secret_or_code(simulator, pipeline_env, caplog) -> None:
    app = OuraOAuthApp.from_settings(pipeline_env)
    # The patient's browser is not our code: its redirect (with the code) is fetched before capturing.
    code = support.authorize_code(app, "liam")
    secrets = [pipeline_env.client_secret or "", code]
    with caplog.at_level(logging.DEBUG):
        tokens = app.exchange_code(code)
        secrets += [tokens.access_token, tokens.refresh_token]
        cipher = TokenCipher(pipeline_env.token_keys)
        store = wh.Warehouse(pipeline_env.warehouse_path)
        with store.transaction("test: connect") as conn:
            wh.upsert_connection(
                conn,
                PATIENT,
                oura_user_id=None,
                scopes=tokens.scopes,
                access_token_enc=cipher.encrypt(tokens.access_token),
                refresh_token_enc=cipher.encrypt(tokens.refresh_token),
                expires_at=tokens.expires_at,
                connected_at=datetime.now(UTC),
            )
        simulator.control.set_user_faults("liam", expire_access_tokens=True)
        simulator.control.set_faults(error_rate=0.2)
        client = OuraClient(
            pipeline_env.api_base_url, settings_source(pipeline_env), retry=RetryPolicy(backoff_base_s=0.001)
        )
        end = simulator.control.now().date()
        client.documents("daily_sleep", end - timedelta(days=7), end)
        client.heartrate(datetime.now(UTC) - timedelta(days=2), datetime.now(UTC))
        access, refresh, _ = stored_pair(store, cipher)
        secrets += [access, refresh]
        with pytest.raises(RefreshRejected):
            app.refresh(tokens.refresh_token)
        app.revoke(access)
        # Revoking ended the grant: the 401 refresh is refused and the patient must reconnect.
        with pytest.raises(ReconnectRequired):
            client.personal_info()
    assert simulator.control.stats()["refresh_grants"] == 1
    assert any("refreshed the Oura access token" in r.getMessage() for r in caplog.records)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "/oauth/revoke?<redacted>" in logged
    for secret in secrets:
        assert secret and secret not in logged
