"""Tokens durable before anything else: a pair Oura has returned survives a kill -9 of the process holding it.

A refresh (PatientTokens) and a code exchange (the API callback) are each killed while they wait for the
warehouse lock the test holds, at several delays after Oura answered; the next use must find the pair, keep
the connection `active`, sync, and never offer Oura a spent refresh token or a spent code.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from oura_assets import coordination
from oura_assets import warehouse as wh
from oura_assets.api.app import create_app
from oura_assets.api.service import ConnectionService
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp, TokenSet
from oura_assets.simulator import SimulatorServer
from oura_assets.sync import sync_patient
from oura_assets.token_journal import GrantEntry, GrantJournal, TokenJournal
from oura_assets.tokens import PatientTokens, TokenCipher, store_granted_tokens
from oura_assets_tests.support import authorize_code

PATIENT = "user_2journalPatient"
KILL_DELAYS_S = (0.0, 0.05, 0.2)


def oura_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("OURA_", "CLERK_"))}


def token_source(settings: Settings, patient_id: str = PATIENT) -> PatientTokens:
    return PatientTokens(
        patient_id=patient_id,
        warehouse=wh.Warehouse(settings.warehouse_path),
        cipher=TokenCipher(settings.token_keys),
        oauth_app=OuraOAuthApp.from_settings(settings),
        lock_dir=settings.lock_dir,
        coordination=coordination.from_settings(settings),
    )


def connection(settings: Settings, patient_id: str = PATIENT) -> wh.ConnectionRecord | None:
    with wh.Warehouse(settings.warehouse_path).connect("test: read connection") as conn:
        return wh.get_connection(conn, patient_id)


def assert_next_sync_succeeds(simulator: SimulatorServer, settings: Settings, ring_user: str) -> None:
    """The stored access token is made to die at Oura, so the sync also spends the stored refresh token."""
    simulator.control.set_user_faults(ring_user, expire_access_tokens=True)
    end = simulator.control.now().date()
    result = sync_patient(
        patient_id=PATIENT,
        client=OuraClient(settings.api_base_url, token_source(settings)),
        warehouse=wh.Warehouse(settings.warehouse_path),
        start=end - timedelta(days=3),
        end=end,
    )
    assert result.status == "success", result.errors
    record = connection(settings)
    assert record is not None and record.status == "active"


def _await(events: Any, expected: str) -> None:
    got = events.get(timeout=60)
    assert got == expected, got


def kill_while_waiting_for_the_warehouse(
    settings: Settings, target: Callable[..., None], args: tuple[Any, ...], delay_s: float
) -> None:
    """Run `target(*args, events, locked)` in a child; when it is about to ask Oura, take the warehouse lock;
    once Oura answered and the child went for the warehouse, SIGKILL it `delay_s` later."""
    context = multiprocessing.get_context("spawn")
    events, locked = context.Queue(), context.Event()
    child = context.Process(target=target, args=(*args, events, locked))
    child.start()
    try:
        _await(events, "asking oura")
        with wh.Warehouse(settings.warehouse_path).connect("test: a long writer"):
            locked.set()
            _await(events, "oura answered")
            _await(events, "waiting for the warehouse")
            time.sleep(delay_s)
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


class _Hooks:
    """Child-side instrumentation: report the token request and its answer, then each warehouse wait."""

    def __init__(self, events: Any, locked: Any) -> None:
        self.events, self.locked, self.answered = events, locked, False

    def around_oura(self, call: Callable[[], TokenSet]) -> TokenSet:
        self.events.put("asking oura")
        assert self.locked.wait(timeout=60)
        answer = call()
        self.answered = True
        self.events.put("oura answered")
        return answer

    def warehouse(self, path: Path) -> wh.Warehouse:
        hooks = self

        class Reporting(wh.Warehouse):
            def transaction(self, purpose: str, timeout_s: float | None = None):  # type: ignore[override]
                if hooks.answered:
                    hooks.events.put("waiting for the warehouse")
                return super().transaction(purpose, timeout_s=timeout_s)

        return Reporting(path, lock_timeout_s=120)

    def oauth(self, settings: Settings) -> OuraOAuthApp:
        hooks = self

        class Reporting(OuraOAuthApp):
            def refresh(self, refresh_token: str, **kwargs: Any) -> TokenSet:
                return hooks.around_oura(lambda: super(Reporting, self).refresh(refresh_token, **kwargs))

            def exchange_code(self, code: str) -> TokenSet:
                return hooks.around_oura(lambda: super(Reporting, self).exchange_code(code))

        return Reporting.from_settings(settings)


def _refresh_in_child(env: dict[str, str], events: Any, locked: Any) -> None:
    settings = load_settings(env, require=("oauth", "tokens"))
    hooks = _Hooks(events, locked)
    PatientTokens(
        PATIENT,
        hooks.warehouse(settings.warehouse_path),
        TokenCipher(settings.token_keys),
        hooks.oauth(settings),
        settings.lock_dir,
        coordination=coordination.from_settings(settings),
    ).get()


def _callback_in_child(env: dict[str, str], code: str, state: str, events: Any, locked: Any) -> None:
    settings = load_settings(env, require=("oauth", "tokens"))
    hooks = _Hooks(events, locked)
    service = ConnectionService(
        settings=settings,
        warehouse=hooks.warehouse(settings.warehouse_path),
        oauth=hooks.oauth(settings),
        cipher=TokenCipher(settings.token_keys),
    )
    service.complete_callback(code, state, None)


def connect_expired(settings: Settings, ring_user: str) -> None:
    """Connect through the code flow and store the pair as already expired, so the next use refreshes."""
    oauth = OuraOAuthApp.from_settings(settings)
    tokens = oauth.exchange_code(authorize_code(OuraOAuthApp.from_settings(settings), ring_user))
    expired = TokenSet(
        tokens.access_token, tokens.refresh_token, datetime.now(UTC) - timedelta(minutes=1), ()
    )
    with wh.Warehouse(settings.warehouse_path).transaction("test: connect") as conn:
        store_granted_tokens(
            conn,
            PATIENT,
            expired,
            TokenCipher(settings.token_keys),
            oura_user_id=None,
            connected_at=datetime.now(UTC),
        )


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", KILL_DELAYS_S)
def test_fault_kill_9_after_oura_rotated_the_pair_keeps_the_connection(
    simulator: SimulatorServer, pipeline_env: Settings, delay_s: float
) -> None:
    ring_user = f"rotated-{int(delay_s * 1000)}"
    connect_expired(pipeline_env, ring_user)
    kill_while_waiting_for_the_warehouse(pipeline_env, _refresh_in_child, (oura_env(),), delay_s)
    assert simulator.control.stats()["refresh_grants"] == 1  # Oura had rotated the pair before the kill

    assert_next_sync_succeeds(simulator, pipeline_env, ring_user)
    stats = simulator.control.stats()
    # The journaled pair was applied: the refresh the sync needed spent the rotated token, not the old one.
    assert (stats["refresh_grants"], stats["spent_refresh_reuse"]) == (2, 0)
    assert not list(pipeline_env.token_journal_dir.glob("*.journal"))


class _AnyJwt:
    def verify(self, token: str) -> str:
        return PATIENT


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", KILL_DELAYS_S)
def test_fault_api_killed_between_code_exchange_and_store_recovers_the_grant_at_start(
    simulator: SimulatorServer, pipeline_env: Settings, delay_s: float
) -> None:
    ring_user = f"granted-{int(delay_s * 1000)}"
    service = ConnectionService(
        pipeline_env,
        wh.Warehouse(pipeline_env.warehouse_path),
        OuraOAuthApp.from_settings(pipeline_env),
        TokenCipher(pipeline_env.token_keys),
    )
    auth_url = httpx.URL(service.start_connect(PATIENT)["authUrl"])
    answer = httpx.get(auth_url.copy_add_param("sim_user", ring_user), follow_redirects=False)
    location = httpx.URL(answer.headers["location"])
    code, state = location.params["code"], location.params["state"]

    kill_while_waiting_for_the_warehouse(pipeline_env, _callback_in_child, (oura_env(), code, state), delay_s)
    assert simulator.control.stats()["code_grants"] == 1
    assert connection(pipeline_env) is None  # the dead callback stored nothing

    with TestClient(create_app(pipeline_env, jwt_verifier=_AnyJwt())) as api:  # type: ignore[arg-type]
        listed = api.get(
            "/api/patient-graph/wearables/connections", headers={"Authorization": "Bearer x"}
        ).json()
    assert [c["status"] for c in listed["data"]["connections"]] == ["active"]
    with wh.Warehouse(pipeline_env.warehouse_path).connect("test: read") as conn:
        events = conn.execute(
            "SELECT event_type FROM patient_graph.patient_events WHERE patient_id = ?", [PATIENT]
        ).fetchall()
        requests = conn.execute(
            "SELECT count(*) FROM patient_graph.sync_requests WHERE patient_id = ?", [PATIENT]
        ).fetchone()
    # As a callback does: the first-data sync (the latest days) and the initial 30-day sync.
    assert events == [("wearable_connected",)] and requests == (2,)

    assert_next_sync_succeeds(simulator, pipeline_env, ring_user)
    stats = simulator.control.stats()
    assert (stats["code_grants"], stats["code_reuse"], stats["spent_refresh_reuse"]) == (1, 0, 0)
    assert stats["refresh_grants"] == 1
    assert not list(pipeline_env.token_journal_dir.glob("*.journal"))


def grant_service(settings: Settings) -> ConnectionService:
    return ConnectionService(
        settings,
        wh.Warehouse(settings.warehouse_path),
        OuraOAuthApp.from_settings(settings),
        TokenCipher(settings.token_keys),
    )


def journal_a_grant(
    settings: Settings, ring_user: str, *, patient_id: str | None, disposition: str
) -> TokenSet:
    """What a callback that died leaves behind: a journaled grant nobody holds."""
    oauth = OuraOAuthApp.from_settings(settings)
    tokens = oauth.exchange_code(authorize_code(OuraOAuthApp.from_settings(settings), ring_user))
    store = coordination.from_settings(settings).journal_store()
    grants = GrantJournal(TokenJournal(store, TokenCipher(settings.token_keys)))
    grants.write(GrantEntry(grants.new_name(), patient_id, tokens, datetime.now(UTC), disposition))
    return tokens


def oura_accepts(settings: Settings, access_token: str) -> bool:
    answer = httpx.get(
        f"{settings.api_base_url}/v2/usercollection/personal_info",
        headers={"Authorization": f"Bearer {access_token}"},
    )
    return answer.status_code == 200


def test_grant_entry_is_private_encrypted_and_named_without_a_secret(simulator, pipeline_env) -> None:
    tokens = journal_a_grant(pipeline_env, "private", patient_id=PATIENT, disposition="store")
    directory = pipeline_env.token_journal_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (entry,) = directory.glob("*.journal")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    content = entry.read_bytes()
    for secret in (tokens.access_token, tokens.refresh_token, PATIENT):
        assert secret.encode() not in content and secret not in entry.name
    assert not list(directory.glob(".*.tmp"))


def test_a_grant_superseded_by_a_newer_connection_is_revoked_not_stored(simulator, pipeline_env) -> None:
    stale = journal_a_grant(pipeline_env, "superseded", patient_id=PATIENT, disposition="store")
    time.sleep(0.01)
    connect_expired(pipeline_env, "superseded")  # the patient connected again since
    newer = connection(pipeline_env)
    assert grant_service(pipeline_env).recover_grants() == {"stored": 0, "revoked": 1, "left": 0}
    assert not oura_accepts(pipeline_env, stale.access_token)
    after = connection(pipeline_env)
    assert after is not None and newer is not None
    assert after.refresh_token_enc == newer.refresh_token_enc
    assert not list(pipeline_env.token_journal_dir.glob("*.journal"))


@pytest.mark.parametrize("patient_id,disposition", [(None, "store"), (PATIENT, "revoke")])
def test_an_unattributable_or_already_refused_grant_is_revoked(
    simulator, pipeline_env, patient_id, disposition
) -> None:
    tokens = journal_a_grant(pipeline_env, "orphan", patient_id=patient_id, disposition=disposition)
    assert oura_accepts(pipeline_env, tokens.access_token)
    assert grant_service(pipeline_env).recover_grants()["revoked"] == 1
    assert not oura_accepts(pipeline_env, tokens.access_token)
    assert connection(pipeline_env) is None
    assert not list(pipeline_env.token_journal_dir.glob("*.journal"))


def test_recovery_leaves_a_grant_whose_callback_is_still_at_work(simulator, pipeline_env) -> None:
    service = grant_service(pipeline_env)
    journal_a_grant(pipeline_env, "in-flight", patient_id=PATIENT, disposition="store")
    (name,) = service.grants.names()
    with service.grants.held(name, wait=True):
        assert grant_service(pipeline_env).recover_grants() == {"stored": 0, "revoked": 0, "left": 0}
    assert service.recover_grants()["stored"] == 1
    record = connection(pipeline_env)
    assert record is not None and record.status == "active"


def test_callback_that_cannot_store_nor_revoke_leaves_the_grant_for_revocation(
    simulator, pipeline_env, monkeypatch
) -> None:
    service = grant_service(pipeline_env)
    auth_url = httpx.URL(service.start_connect(PATIENT)["authUrl"])
    location = httpx.URL(
        httpx.get(auth_url.copy_add_param("sim_user", "refused"), follow_redirects=False).headers["location"]
    )

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError("the disk refused the warehouse write")

    monkeypatch.setattr(service, "_store_grant", refused)
    monkeypatch.setattr(service, "_revoke_quietly", lambda *args: False)
    with pytest.raises(OSError, match="refused"):
        service.complete_callback(location.params["code"], location.params["state"], None)
    (name,) = service.grants.names()
    entry = service.grants.read(name)
    assert entry is not None and entry.disposition == "revoke"
    monkeypatch.undo()
    assert grant_service(pipeline_env).recover_grants()["revoked"] == 1
    assert not oura_accepts(pipeline_env, entry.tokens.access_token)
    assert connection(pipeline_env) is None
