"""The connection API (CONTRACT §3) route by route, against the simulator over real HTTP and a real warehouse.

The API itself runs in-process (TestClient); Oura's side — consent page, code exchange, personal_info,
revoke — is the simulator on loopback, so every OAuth step is the real protocol.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from starlette.testclient import TestClient

from oura_assets import warehouse as wh
from oura_assets.api import create_app
from oura_assets.api.auth import JwtVerifier, StaticKeys
from oura_assets.api.state import state_hash
from oura_assets.config import Settings, load_settings
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.simulator import SimulatorServer
from oura_assets.tokens import PatientTokens, TokenCipher
from oura_assets_tests.api_support import ISSUER, ApiHarness, claims, new_key, public, sign
from oura_assets_tests.conftest import TEST_CLIENT_SECRET
from oura_assets_tests.support import query

W = "/api/patient-graph/wearables"
KEY = new_key()


def make_app(settings: Settings, **kwargs: Any):
    kwargs.setdefault("jwt_verifier", JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER))
    return create_app(settings, **kwargs)


@pytest.fixture
def api(pipeline_env: Settings, simulator: SimulatorServer) -> Iterator[ApiHarness]:
    with TestClient(make_app(pipeline_env)) as client:
        yield ApiHarness(client=client, settings=pipeline_env, simulator=simulator, key=KEY)


@pytest.fixture(scope="module")
def bare_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    """One app for the many requests that are refused before Oura is involved (no simulator needed)."""
    folder = tmp_path_factory.mktemp("bare-api")
    env = {
        "OURA_CLIENT_ID": "test-client",
        "OURA_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "OURA_REDIRECT_URI": "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura",
        "OURA_AUTHORIZE_URL": "http://127.0.0.1:9/oauth/authorize",
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
        "OURA_ASSETS_WAREHOUSE": str(folder / "warehouse.duckdb"),
        "OURA_ASSETS_START_DATE": "2024-01-01",
    }
    settings = load_settings(env, require=("oauth", "tokens"))
    with TestClient(make_app(settings)) as client:
        yield ApiHarness(client=client, settings=settings, simulator=None, key=KEY)


def error_of(answer: httpx.Response) -> str:
    body = answer.json()
    assert body["success"] is False, body
    assert set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def today() -> date:
    return datetime.now(UTC).date()


def test_healthz_answers_without_auth(bare_api: ApiHarness) -> None:
    answer = bare_api.call("GET", "/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "data": {"status": "ok"}}


PROTECTED = [
    ("POST", f"{W}/connect/oura", None),
    ("POST", f"{W}/sync", {"source": "oura"}),
    ("GET", f"{W}/sync/some-id", None),
    ("GET", f"{W}/connections", None),
    ("DELETE", f"{W}/connections/oura", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer " + sign(new_key(), claims("patient-a")),
        "Bearer " + sign(KEY, claims("patient-a", exp=1_000_000)),
    ],
    ids=["none", "empty", "basic", "garbage", "wrong-key", "expired"],
)
def test_every_protected_route_answers_401_without_a_valid_jwt(
    bare_api: ApiHarness, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = bare_api.call(method, path, headers=headers, json=body)
    assert answer.status_code == 401
    assert error_of(answer) == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_connect_answers_the_contract_auth_url_and_stores_only_the_state_hash(api: ApiHarness) -> None:
    auth_url = api.start_connect("patient-a")
    settings = api.settings
    expected = (
        f"{settings.authorize_url}?client_id=test-client&redirect_uri="
        "http%3A%2F%2F127.0.0.1%3A9%2Fapi%2Fpatient-graph%2Fwearables%2Fcallback%2Foura"
        "&scope=email+personal+daily+heartrate+workout+session&response_type=code&state="
    )
    assert auth_url.startswith(expected)
    assert api.responses[-1].headers["cache-control"] == "no-store"
    state = httpx.URL(auth_url).params["state"]
    assert len(state) >= 43
    rows = query(
        settings, "SELECT state_hash, patient_id, expires_at, used_at FROM patient_graph.oauth_states"
    )
    assert [(r[0], r[1], r[3]) for r in rows] == [(state_hash(state), "patient-a", None)]
    lifetime = rows[0][2] - datetime.now(UTC)
    assert timedelta(minutes=9) < lifetime <= timedelta(minutes=10)
    assert state.encode() not in settings.warehouse_path.read_bytes()


def test_connect_states_are_unique(api: ApiHarness) -> None:
    states = {httpx.URL(api.start_connect("patient-a")).params["state"] for _ in range(5)}
    assert len(states) == 5


@pytest.mark.parametrize(
    ("method", "path"), [("POST", f"{W}/connect/fitbit"), ("DELETE", f"{W}/connections/garmin")]
)
def test_unknown_source_is_invalid_request(bare_api: ApiHarness, method: str, path: str) -> None:
    answer = bare_api.call(method, path, "patient-a")
    assert answer.status_code == 422
    assert error_of(answer) == "invalid_request"


def test_callback_connects_stores_encrypted_tokens_records_event_and_queues_30_days(api: ApiHarness) -> None:
    data = api.connect("patient-a", "alice-ring")
    assert data["status"] == "active"
    assert data["patientId"] == "patient-a"
    assert (data["startDate"], data["endDate"]) == (
        (today() - timedelta(days=29)).isoformat(),
        today().isoformat(),
    )

    ((status, oura_user_id, access_enc, refresh_enc, scopes),) = query(
        api.settings,
        "SELECT status, oura_user_id, access_token_enc, refresh_token_enc, scopes "
        "FROM patient_graph.wearable_connections WHERE patient_id = 'patient-a'",
    )
    assert status == "active"
    assert oura_user_id
    assert "daily" in scopes
    cipher = TokenCipher(api.settings.token_keys)
    access = cipher.decrypt(access_enc)
    refresh = cipher.decrypt(refresh_enc)
    raw = api.settings.warehouse_path.read_bytes()
    assert access.encode() not in raw
    assert refresh.encode() not in raw
    # The stored token is the one Oura issued for this ring account.
    info = httpx.get(
        f"{api.simulator.url}/v2/usercollection/personal_info", headers={"Authorization": f"Bearer {access}"}
    )
    assert info.status_code == 200
    assert info.json()["id"] == oura_user_id

    events = query(
        api.settings,
        "SELECT event_type, payload FROM patient_graph.patient_events WHERE patient_id = 'patient-a'",
    )
    assert [e[0] for e in events] == ["wearable_connected"]
    assert json.loads(events[0][1])["ouraUserId"] == oura_user_id

    # The 30-day initial sync, and queued ahead of it the first-data sync of the three most recent days.
    requests = query(
        api.settings,
        "SELECT sync_id, patient_id, start_day, end_day, status FROM patient_graph.sync_requests "
        "ORDER BY requested_at",
    )
    assert requests == [
        (data["firstDataSyncId"], "patient-a", today() - timedelta(days=2), today(), "queued"),
        (data["syncId"], "patient-a", today() - timedelta(days=29), today(), "queued"),
    ]
    assert api.settings.warehouse_path.with_name(api.settings.warehouse_path.name + ".sync-queue").exists()


def test_callback_replayed_state_is_invalid_state(api: ApiHarness) -> None:
    params = api.consent(api.start_connect("patient-a"), "alice-ring")
    assert api.callback(params).status_code == 200
    again = api.callback(params)
    assert again.status_code == 400
    assert error_of(again) == "invalid_state"
    assert query(api.settings, "SELECT count(*) FROM patient_graph.patient_events") == [(1,)]


@pytest.mark.parametrize(
    "params",
    [
        {"code": "whatever", "state": "A" * 43},
        {"code": "whatever", "state": "short"},
        {"code": "whatever"},
        {"code": "whatever", "state": ""},
    ],
    ids=["forged", "malformed", "missing", "empty"],
)
def test_callback_forged_or_missing_state_is_invalid_state(
    bare_api: ApiHarness, params: dict[str, str]
) -> None:
    answer = bare_api.callback(params)
    assert answer.status_code == 400
    assert error_of(answer) == "invalid_state"
    assert query(bare_api.settings, "SELECT count(*) FROM patient_graph.wearable_connections") == [(0,)]


def test_callback_expired_state_is_invalid_state(api: ApiHarness) -> None:
    params = api.consent(api.start_connect("patient-a"), "alice-ring")
    with wh.Warehouse(api.settings.warehouse_path).transaction("test: age the state") as conn:
        conn.execute(
            "UPDATE patient_graph.oauth_states SET expires_at = ?", [datetime.now(UTC) - timedelta(seconds=1)]
        )
    answer = api.callback(params)
    assert answer.status_code == 400
    assert error_of(answer) == "invalid_state"
    assert query(api.settings, "SELECT count(*) FROM patient_graph.wearable_connections") == [(0,)]


def test_callback_other_oauth_error_is_oauth_error_and_spends_the_state(api: ApiHarness) -> None:
    state = httpx.URL(api.start_connect("patient-a")).params["state"]
    answer = api.callback({"error": "server_error", "state": state})
    assert answer.status_code == 400
    assert error_of(answer) == "oauth_error"
    assert query(api.settings, "SELECT used_at IS NOT NULL FROM patient_graph.oauth_states") == [(True,)]


def test_callback_without_code_is_invalid_request(api: ApiHarness) -> None:
    state = httpx.URL(api.start_connect("patient-a")).params["state"]
    answer = api.callback({"state": state})
    assert answer.status_code == 422
    assert error_of(answer) == "invalid_request"


def test_callback_code_rejected_by_oura_is_invalid_code(api: ApiHarness) -> None:
    state = httpx.URL(api.start_connect("patient-a")).params["state"]
    answer = api.callback({"code": "not-a-code-oura-issued", "state": state})
    assert answer.status_code == 400
    assert error_of(answer) == "invalid_code"
    assert query(api.settings, "SELECT count(*) FROM patient_graph.wearable_connections") == [(0,)]


def test_callback_access_denied_stores_nothing_and_spends_the_state(api: ApiHarness) -> None:
    auth_url = api.start_connect("patient-a")
    params = api.consent(auth_url, deny=True)
    assert params["error"] == "access_denied"
    answer = api.callback(params)
    assert answer.status_code == 400
    assert error_of(answer) == "access_denied"
    for table in ("wearable_connections", "patient_events", "sync_requests"):
        assert query(api.settings, f"SELECT count(*) FROM patient_graph.{table}") == [(0,)]  # noqa: S608
    # The state is spent: a code obtained later cannot ride on it.
    code = api.consent(auth_url, "alice-ring")["code"]
    late = api.callback({"code": code, "state": params["state"]})
    assert error_of(late) == "invalid_state"


def test_state_is_bound_to_the_patient_who_asked(api: ApiHarness) -> None:
    """B completes the consent with A's state: the grant lands on A (who asked), never on B."""
    auth_url_of_a = api.start_connect("patient-a")
    data = api.callback(api.consent(auth_url_of_a, "bob-ring")).json()["data"]
    assert data["patientId"] == "patient-a"
    assert api.call("GET", f"{W}/connections", "patient-b").json()["data"]["connections"] == []
    assert query(api.settings, "SELECT patient_id FROM patient_graph.wearable_connections") == [
        ("patient-a",)
    ]


def test_reconnect_replaces_tokens_and_reactivates(api: ApiHarness) -> None:
    api.connect("patient-a", "alice-ring")
    sql = "SELECT access_token_enc, refresh_token_enc, status FROM patient_graph.wearable_connections"
    ((first_access, first_refresh, _),) = query(api.settings, sql)
    assert api.call("DELETE", f"{W}/connections/oura", "patient-a").status_code == 200
    assert query(api.settings, sql)[0] == (None, None, "disconnected")
    api.connect("patient-a", "alice-ring")
    ((access, refresh, status),) = query(api.settings, sql)
    cipher = TokenCipher(api.settings.token_keys)
    assert status == "active"
    assert cipher.decrypt(access) != cipher.decrypt(first_access)
    assert cipher.decrypt(refresh) != cipher.decrypt(first_refresh)
    events = query(api.settings, "SELECT event_type FROM patient_graph.patient_events ORDER BY occurred_at")
    assert [e[0] for e in events] == ["wearable_connected", "wearable_disconnected", "wearable_connected"]


def test_reconnect_while_active_replaces_tokens(api: ApiHarness) -> None:
    api.connect("patient-a", "alice-ring")
    sql = "SELECT access_token_enc FROM patient_graph.wearable_connections"
    cipher = TokenCipher(api.settings.token_keys)
    first = cipher.decrypt(query(api.settings, sql)[0][0])
    api.connect("patient-a", "alice-ring")
    assert cipher.decrypt(query(api.settings, sql)[0][0]) != first
    assert query(api.settings, "SELECT count(*) FROM patient_graph.wearable_connections") == [(1,)]


def test_sync_queues_a_request_and_status_follows_it(api: ApiHarness) -> None:
    api.connect("patient-a")
    answer = api.call(
        "POST",
        f"{W}/sync",
        "patient-a",
        json={"source": "oura", "startDate": "2024-06-10", "endDate": "2024-06-16"},
    )
    assert answer.status_code == 202
    data = answer.json()["data"]
    assert data["status"] == "queued"
    sync_id = data["syncId"]
    status = api.call("GET", f"{W}/sync/{sync_id}", "patient-a").json()["data"]
    assert (status["status"], status["startDate"], status["endDate"]) == (
        "queued",
        "2024-06-10",
        "2024-06-16",
    )
    assert status["runId"] is None

    store = wh.Warehouse(api.settings.warehouse_path)
    with store.transaction("test: run starts") as conn:
        wh.mark_sync_request(conn, sync_id, "running", run_id="run-1")
    assert api.call("GET", f"{W}/sync/{sync_id}", "patient-a").json()["data"]["status"] == "running"
    with store.transaction("test: run ends") as conn:
        wh.mark_sync_request(conn, sync_id, "partial", result={"rows": {"wearable_data": 3}, "errors": []})
    final = api.call("GET", f"{W}/sync/{sync_id}", "patient-a").json()["data"]
    assert final["status"] == "partial"
    assert final["runId"] == "run-1"
    assert final["finishedAt"] is not None
    assert final["result"]["rows"] == {"wearable_data": 3}


def test_sync_without_dates_covers_the_last_30_days(api: ApiHarness) -> None:
    api.connect("patient-a")
    data = api.call("POST", f"{W}/sync", "patient-a", json={"source": "oura"}).json()["data"]
    assert (data["startDate"], data["endDate"]) == (
        (today() - timedelta(days=29)).isoformat(),
        today().isoformat(),
    )


def test_sync_without_connection_is_not_connected(api: ApiHarness) -> None:
    answer = api.call("POST", f"{W}/sync", "patient-a", json={"source": "oura"})
    assert answer.status_code == 409
    assert error_of(answer) == "not_connected"


@pytest.mark.parametrize(
    "body",
    [
        b'{"source": "fitbit"}',
        b'{"source": "OURA"}',
        b"{}",
        b"",
        b"not json",
        b'["oura"]',
        b'{"source": "oura", "startDate": "2024-06-16", "endDate": "2024-06-10"}',
        b'{"source": "oura", "startDate": "2024-13-01"}',
        b'{"source": "oura", "startDate": 1717200000}',
        b'{"source": "oura", "startDate": "2024-06-10T00:00:00Z"}',
        b'{"source": "oura", "endDate": "2999-01-01"}',
        b'{"source": "oura", "startDate": "2020-01-01", "endDate": "2024-06-01"}',
        b'{"source": "oura", "startDate": "2023-06-01", "endDate": "2023-06-02"}',
        b'{"source": "oura", "start_date": "2024-06-10"}',
    ],
    ids=[
        "unknown-source",
        "source-case",
        "no-source",
        "empty-body",
        "malformed-json",
        "array",
        "start-after-end",
        "bad-date",
        "number-date",
        "datetime",
        "future",
        "too-long",
        "before-first-partition",
        "unknown-field",
    ],
)
def test_sync_invalid_body_is_invalid_request(bare_api: ApiHarness, body: bytes) -> None:
    answer = bare_api.call(
        "POST", f"{W}/sync", "patient-v", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert error_of(answer) == "invalid_request"
    assert query(bare_api.settings, "SELECT count(*) FROM patient_graph.sync_requests") == [(0,)]


def test_patients_cannot_see_sync_or_read_each_others_syncs(api: ApiHarness) -> None:
    a = api.connect("patient-a", "alice-ring")
    listing_b = api.call("GET", f"{W}/connections", "patient-b").json()["data"]["connections"]
    assert listing_b == []
    other = api.call("GET", f"{W}/sync/{a['syncId']}", "patient-b")
    unknown = api.call("GET", f"{W}/sync/00000000-0000-0000-0000-000000000000", "patient-b")
    assert other.status_code == unknown.status_code == 404
    assert other.json() == unknown.json()  # indistinguishable from a sync that does not exist
    assert error_of(other) == "not_found"
    assert api.call("POST", f"{W}/sync", "patient-b", json={"source": "oura"}).status_code == 409
    assert api.call("DELETE", f"{W}/connections/oura", "patient-b").status_code == 409
    assert query(api.settings, "SELECT status FROM patient_graph.wearable_connections") == [("active",)]
    assert api.call("GET", f"{W}/sync/{a['syncId']}", "patient-a").status_code == 200


def test_connections_lists_the_callers_connection_without_tokens(api: ApiHarness) -> None:
    assert api.call("GET", f"{W}/connections", "patient-a").json()["data"] == {"connections": []}
    api.connect("patient-a")
    with wh.Warehouse(api.settings.warehouse_path).transaction("test: synced") as conn:
        wh.mark_synced(conn, "patient-a", datetime(2024, 6, 17, 3, 0, tzinfo=UTC))
    (item,) = api.call("GET", f"{W}/connections", "patient-a").json()["data"]["connections"]
    assert set(item) == {"source", "status", "scopes", "connectedAt", "lastSyncedAt", "lastError"}
    assert (item["source"], item["status"], item["lastError"]) == ("oura", "active", None)
    assert item["lastSyncedAt"].startswith("2024-06-17T03:00:00")
    assert "heartrate" in item["scopes"]
    assert datetime.fromisoformat(item["connectedAt"]) <= datetime.now(UTC)


def test_disconnect_revokes_at_oura_deletes_tokens_and_records_event(api: ApiHarness) -> None:
    api.connect("patient-a", "alice-ring")
    ((access_enc,),) = query(api.settings, "SELECT access_token_enc FROM patient_graph.wearable_connections")
    access = TokenCipher(api.settings.token_keys).decrypt(access_enc)
    revocations = api.simulator.control.stats()["revocations"]
    answer = api.call("DELETE", f"{W}/connections/oura", "patient-a")
    assert answer.status_code == 200
    assert answer.json()["data"] == {"source": "oura", "status": "disconnected", "revoked": True}
    assert api.simulator.control.stats()["revocations"] == revocations + 1
    old = httpx.get(
        f"{api.simulator.url}/v2/usercollection/personal_info", headers={"Authorization": f"Bearer {access}"}
    )
    assert old.status_code == 401
    assert query(
        api.settings,
        "SELECT status, access_token_enc, refresh_token_enc FROM patient_graph.wearable_connections",
    ) == [("disconnected", None, None)]
    events = query(api.settings, "SELECT event_type FROM patient_graph.patient_events ORDER BY occurred_at")
    assert [e[0] for e in events] == ["wearable_connected", "wearable_disconnected"]
    (item,) = api.call("GET", f"{W}/connections", "patient-a").json()["data"]["connections"]
    assert item["status"] == "disconnected"
    # Disconnected: nothing more to disconnect, and no sync.
    assert error_of(api.call("DELETE", f"{W}/connections/oura", "patient-a")) == "not_connected"
    assert error_of(api.call("POST", f"{W}/sync", "patient-a", json={"source": "oura"})) == "not_connected"


def test_disconnect_when_revoke_fails_still_disconnects(
    pipeline_env: Settings, simulator: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead_revoke = OuraOAuthApp(
        pipeline_env.client_id or "",
        pipeline_env.client_secret or "",
        pipeline_env.redirect_uri or "",
        pipeline_env.authorize_url,
        pipeline_env.token_url,
        "http://127.0.0.1:9/oauth/revoke",
        timeout_s=2,
    )
    caplog.set_level(logging.DEBUG)
    with TestClient(make_app(pipeline_env, oauth_app=dead_revoke)) as client:
        harness = ApiHarness(client=client, settings=pipeline_env, simulator=simulator, key=KEY)
        harness.connect("patient-a")
        ((access_enc,),) = query(
            pipeline_env, "SELECT access_token_enc FROM patient_graph.wearable_connections"
        )
        answer = harness.call("DELETE", f"{W}/connections/oura", "patient-a")
    assert answer.status_code == 200
    assert answer.json()["data"]["revoked"] is False
    assert query(pipeline_env, "SELECT status FROM patient_graph.wearable_connections") == [("disconnected",)]
    assert "revoking patient patient-a's Oura token failed" in caplog.text
    assert TokenCipher(pipeline_env.token_keys).decrypt(access_enc) not in caplog.text


def test_unknown_route_and_wrong_method_use_the_envelope(bare_api: ApiHarness) -> None:
    missing = bare_api.call("GET", "/api/patient-graph/nothing-here")
    assert missing.status_code == 404
    assert error_of(missing) == "not_found"
    wrong = bare_api.call("GET", f"{W}/connect/oura")
    assert wrong.status_code == 405
    assert error_of(wrong) == "method_not_allowed"


LEAKY_SECRET = "sekrit-" + "token-123"


class ExplodingWarehouse(wh.Warehouse):
    """A warehouse that fails with a message quoting a secret, as a careless library might."""

    def connect(self, purpose: str, timeout_s: float | None = None):  # type: ignore[override]
        if purpose.startswith("api:"):
            raise RuntimeError(f"boom: access_token={LEAKY_SECRET}")
        return super().connect(purpose, timeout_s)


def test_unexpected_error_is_a_500_envelope_without_details(
    pipeline_env: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(pipeline_env, warehouse=ExplodingWarehouse(pipeline_env.warehouse_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        token = sign(KEY, claims("patient-a"))
        answer = client.get(f"{W}/connections", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 500
    assert error_of(answer) == "internal_error"
    assert "sekrit" not in answer.text
    assert "Traceback" not in answer.text
    assert "unhandled RuntimeError" in caplog.text
    assert "sekrit" not in caplog.text


def test_warehouse_busy_is_503_with_retry_after(pipeline_env: Settings, simulator: SimulatorServer) -> None:
    store = wh.Warehouse(pipeline_env.warehouse_path, lock_timeout_s=0.05)
    with TestClient(make_app(pipeline_env, warehouse=store)) as client:
        harness = ApiHarness(client=client, settings=pipeline_env, simulator=simulator, key=KEY)
        harness.connect("patient-a")
        # Another holder (here: this process, another thread's worth of lock) keeps the warehouse busy.
        with wh.Warehouse(pipeline_env.warehouse_path).connect("test: hold the lock"):
            answers = [
                harness.call("POST", f"{W}/sync", "patient-a", json={"source": "oura"}),
                harness.call("GET", f"{W}/connections", "patient-a"),
                harness.call("POST", f"{W}/connect/oura", "patient-a"),
            ]
    for answer in answers:
        assert answer.status_code == 503
        assert error_of(answer) == "warehouse_busy"
        assert int(answer.headers["retry-after"]) >= 1
        assert "test: hold the lock" not in answer.text


def test_no_secret_in_any_response_or_log_line(api: ApiHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth_url = api.start_connect("patient-a")
    params = api.consent(auth_url, "alice-ring")
    api.callback(params)
    api.callback(params)  # replay
    sync = api.call("POST", f"{W}/sync", "patient-a", json={"source": "oura"}).json()["data"]
    api.call("GET", f"{W}/sync/{sync['syncId']}", "patient-a")
    api.call("GET", f"{W}/connections", "patient-a")
    ((access_enc, refresh_enc),) = query(
        api.settings, "SELECT access_token_enc, refresh_token_enc FROM patient_graph.wearable_connections"
    )
    cipher = TokenCipher(api.settings.token_keys)
    access, refresh = cipher.decrypt(access_enc), cipher.decrypt(refresh_enc)
    api.call("DELETE", f"{W}/connections/oura", "patient-a")
    jwt = api.token("patient-a")
    secrets = {
        "access token": access,
        "refresh token": refresh,
        "encrypted access token": access_enc,
        "client secret": TEST_CLIENT_SECRET,
        "code": params["code"],
        "state": params["state"],
        "jwt": jwt,
        "jwt signature": jwt.rsplit(".", 1)[1],
    }
    bodies = [r.text for r in api.responses[1:]]  # the first is connect, whose authUrl carries the state
    assert len(bodies) >= 6
    log_text = "\n".join(record.getMessage() for record in caplog.records)
    for name, secret in secrets.items():
        for body in bodies:
            assert secret not in body, f"{name} in a response"
        assert secret not in log_text, f"{name} in a log line"


def test_callback_waits_out_a_busy_warehouse_once_oura_has_spent_the_code(
    pipeline_env: Settings, simulator: SimulatorServer
) -> None:
    """The code is single-use: a warehouse busy at the final write must not cost the patient the flow."""
    store = wh.Warehouse(pipeline_env.warehouse_path, lock_timeout_s=0.05)
    app = make_app(pipeline_env, warehouse=store)
    held, released = threading.Event(), threading.Event()

    def hold_warehouse() -> None:
        with wh.Warehouse(pipeline_env.warehouse_path).connect("test: a run writing"):
            held.set()
            time.sleep(0.5)
        released.set()

    with TestClient(app) as client:
        harness = ApiHarness(client=client, settings=pipeline_env, simulator=simulator, key=KEY)
        params = harness.consent(harness.start_connect("patient-a"), "alice-ring")
        oauth = app.state.service.oauth
        exchange = oauth.exchange_code

        def exchange_then_lose_the_race(code: str):
            tokens = exchange(code)
            holder = threading.Thread(target=hold_warehouse)
            holder.start()
            assert held.wait(10)  # the holder has the warehouse before the callback's final write
            return tokens

        oauth.exchange_code = exchange_then_lose_the_race
        answer = harness.callback(params)
    assert released.is_set()
    assert answer.status_code == 200, answer.text
    assert query(pipeline_env, "SELECT status FROM patient_graph.wearable_connections") == [("active",)]


def test_disconnect_revokes_tokens_a_concurrent_refresh_rotated_in(
    pipeline_env: Settings, simulator: SimulatorServer
) -> None:
    """A nightly run may rotate the pair while Oura answers the disconnect's revoke: the rotated tokens are
    the ones stored at delete time, and they must be revoked too, not just dropped locally."""
    app = make_app(pipeline_env)
    with TestClient(app) as client:
        harness = ApiHarness(client=client, settings=pipeline_env, simulator=simulator, key=KEY)
        harness.connect("patient-a")
        oauth = app.state.service.oauth
        source = PatientTokens(
            patient_id="patient-a",
            warehouse=wh.Warehouse(pipeline_env.warehouse_path),
            cipher=TokenCipher(pipeline_env.token_keys),
            oauth_app=OuraOAuthApp.from_settings(pipeline_env),
            lock_dir=pipeline_env.lock_dir,
        )
        revoke, rotated = oauth.revoke, []

        def revoke_while_a_run_refreshes(access_token: str) -> None:
            if not rotated:
                rotated.append(source.force_refresh(access_token))
            revoke(access_token)

        oauth.revoke = revoke_while_a_run_refreshes
        answer = harness.call("DELETE", f"{W}/connections/oura", "patient-a")
    assert answer.status_code == 200 and answer.json()["data"]["revoked"] is True
    still_valid = httpx.get(
        f"{simulator.url}/v2/usercollection/personal_info", headers={"Authorization": f"Bearer {rotated[0]}"}
    )
    assert still_valid.status_code == 401
    assert query(
        pipeline_env,
        "SELECT status, access_token_enc IS NULL, refresh_token_enc IS NULL "
        "FROM patient_graph.wearable_connections",
    ) == [("disconnected", True, True)]
