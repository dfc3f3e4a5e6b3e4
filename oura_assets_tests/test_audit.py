"""The audit trail (issue 9): exactly one `audit_log` row per connection-API call, failures included, with the
caller's request id echoed, and never a token, code, state or JWT in the table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from oura_assets import warehouse as wh
from oura_assets.config import Settings
from oura_assets.tokens import TokenCipher
from oura_assets_tests.api_support import ApiHarness, api_harness, new_key
from oura_assets_tests.support import query

W = "/api/patient-graph/wearables"
PATIENT = "patient-audit-1"
KEY = new_key()


@pytest.fixture
def api(pipeline_env: Settings, simulator: Any) -> Iterator[ApiHarness]:
    yield from api_harness(pipeline_env, simulator, KEY)


def audit_rows(settings: Settings) -> list[wh.AuditEntry]:
    with wh.Warehouse(settings.warehouse_path).connect("test: audit") as conn:
        return wh.read_audit_log(conn)


def by_request(settings: Settings, request_id: str) -> list[wh.AuditEntry]:
    return [entry for entry in audit_rows(settings) if entry.request_id == request_id]


def call(api: ApiHarness, method: str, path: str, request_id: str, patient: str | None = PATIENT, **kw: Any):
    answer = api.call(
        method, path, patient, headers={"X-Request-Id": request_id, **kw.pop("headers", {})}, **kw
    )
    assert answer.headers["x-request-id"] == request_id
    return answer


def test_every_route_leaves_exactly_one_audit_row_and_no_secret(api: ApiHarness) -> None:
    settings = api.settings
    secrets: list[str] = []

    answer = call(api, "POST", f"{W}/connect/oura", "req-connect")
    auth_url = answer.json()["data"]["authUrl"]
    secrets += [api.token(PATIENT), httpx.URL(auth_url).params["state"]]
    params = api.consent(auth_url, "ring-audit")
    secrets += [params["code"], params["state"]]
    answer = call(api, "GET", f"{W}/callback/oura", "req-callback", patient=None, params=params)
    assert answer.status_code == 200, answer.text
    sync_id = call(api, "POST", f"{W}/sync", "req-sync", json={"source": "oura"}).json()["data"]["syncId"]
    call(api, "GET", f"{W}/sync/{sync_id}", "req-status")
    call(api, "GET", f"{W}/connections", "req-connections")
    with wh.Warehouse(settings.warehouse_path).connect("test: tokens") as conn:
        connection = wh.get_connection(conn, PATIENT)
    assert connection is not None and connection.access_token_enc and connection.refresh_token_enc
    cipher = TokenCipher(settings.token_keys)
    secrets += [cipher.decrypt(connection.access_token_enc), cipher.decrypt(connection.refresh_token_enc)]
    assert call(api, "DELETE", f"{W}/connections/oura", "req-disconnect").status_code == 200
    erase = call(api, "DELETE", f"{W}/connections/oura", "req-erase", params={"erase": "true"})
    assert erase.status_code == 200

    expected = {
        "req-connect": ("connect", 200),
        "req-callback": ("callback", 200),
        "req-sync": ("sync_request", 202),
        "req-status": ("sync_status", 200),
        "req-connections": ("connections", 200),
        "req-disconnect": ("disconnect", 200),
        "req-erase": ("erase", 200),
    }
    for request_id, (action, status) in expected.items():
        (entry,) = by_request(settings, request_id)
        assert (entry.action, entry.outcome, entry.status_code) == (action, "ok", status), request_id
        assert (entry.actor, entry.patient_id) == (PATIENT, PATIENT)
        assert entry.client_address == "testclient"
    assert len(audit_rows(settings)) == len(expected)
    assert call(api, "GET", "/healthz", "req-health", patient=None).status_code == 200
    assert len(audit_rows(settings)) == len(expected)

    text = "\n".join(
        row[0] for row in query(settings, "SELECT CAST(a AS VARCHAR) FROM patient_graph.audit_log AS a")
    )
    assert all(secret not in text for secret in secrets)
    assert "Bearer" not in text and "eyJ" not in text


ANON = wh.ANONYMOUS
FAILURES = [
    # method, path, caller, request kwargs, action, status, outcome, actor recorded
    ("POST", f"{W}/connect/oura", None, {}, "connect", 401, "unauthorized", ANON),
    ("POST", f"{W}/connect/fitbit", PATIENT, {}, "connect", 422, "invalid_request", ANON),
    (
        "GET",
        f"{W}/callback/oura",
        None,
        {"params": {"code": "c", "state": "s" * 43}},
        "callback",
        400,
        "invalid_state",
        ANON,
    ),
    (
        "POST",
        f"{W}/sync",
        PATIENT,
        {"json": {"source": "oura"}},
        "sync_request",
        409,
        "not_connected",
        PATIENT,
    ),
    (
        "POST",
        f"{W}/sync",
        PATIENT,
        {"json": {"source": "fitbit"}},
        "sync_request",
        422,
        "invalid_request",
        PATIENT,
    ),
    (
        "POST",
        f"{W}/sync",
        PATIENT,
        {"content": b"x" * 20_000},
        "sync_request",
        413,
        "request_too_large",
        ANON,
    ),
    ("GET", f"{W}/sync/nope", PATIENT, {}, "sync_status", 404, "not_found", PATIENT),
    ("GET", f"{W}/connections", None, {}, "connections", 401, "unauthorized", ANON),
    ("DELETE", f"{W}/connections/oura", PATIENT, {}, "disconnect", 409, "not_connected", PATIENT),
    (
        "DELETE",
        f"{W}/connections/oura",
        PATIENT,
        {"params": {"erase": "maybe"}},
        "erase",
        422,
        "invalid_request",
        PATIENT,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "caller", "kwargs", "action", "status", "outcome", "actor"), FAILURES
)
def test_a_failing_call_is_audited_once_with_its_error_code(
    api: ApiHarness,
    method: str,
    path: str,
    caller: str | None,
    kwargs: dict,
    action: str,
    status: int,
    outcome: str,
    actor: str,
) -> None:
    answer = call(api, method, path, "req-failing", patient=caller, **kwargs)

    assert answer.status_code == status, answer.text
    (entry,) = audit_rows(api.settings)
    assert (entry.action, entry.outcome, entry.status_code, entry.request_id) == (
        action,
        outcome,
        status,
        "req-failing",
    )
    assert entry.actor == actor
    assert entry.patient_id == (None if actor == ANON else PATIENT)


@pytest.mark.parametrize("supplied", ["has space", "x" * 129, "bad/slash", ""])
def test_a_malformed_request_id_is_replaced_by_a_fresh_one(api: ApiHarness, supplied: str) -> None:
    answer = api.call(
        "GET", f"{W}/connections", PATIENT, headers={"X-Request-Id": supplied} if supplied else {}
    )

    generated = answer.headers["x-request-id"]
    assert generated != supplied and len(generated) == 32
    (entry,) = audit_rows(api.settings)
    assert entry.request_id == generated
