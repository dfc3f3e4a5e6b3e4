"""The OAuth app: the authorize URL's exact shape, what the token endpoint is sent, tolerant parsing of its
answers, failures mapped to safe errors (scripted with httpx.MockTransport), and no secret in logs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest

from oura_assets.config import OAUTH_SCOPES, load_settings
from oura_assets.oura.client import OuraClient, OuraUnauthorized
from oura_assets.oura.oauth import (
    DEFAULT_EXPIRES_IN,
    OuraOAuthApp,
    RefreshRejected,
    TokenEndpointError,
    TokenSet,
)
from oura_assets_tests import support

CLIENT_ID = "my-client"
CLIENT_SECRET = "s3cret-client-value-xyz"
REDIRECT = "https://app.example.com/api/patient-graph/wearables/callback/oura"
CODE = "auth-code-abc123"
REFRESH = "refresh-token-old-777"
ACCESS = "access-token-old-555"
NEW_ACCESS = "access-token-new-888"
NEW_REFRESH = "refresh-token-new-999"
SECRETS = (CLIENT_SECRET, CODE, REFRESH, ACCESS, NEW_ACCESS, NEW_REFRESH)


class TokenEndpoint:
    """Answers every request with `respond(request)` and keeps the requests."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def form(self, index: int = -1) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[index].content.decode()).items()}


def app_with(respond: Callable[[httpx.Request], httpx.Response]) -> tuple[OuraOAuthApp, TokenEndpoint]:
    endpoint = TokenEndpoint(respond)
    app = OuraOAuthApp(
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT,
        "https://cloud.ouraring.com/oauth/authorize",
        "https://api.ouraring.com/oauth/token",
        "https://api.ouraring.com/oauth/revoke",
        transport=httpx.MockTransport(endpoint),
    )
    return app, endpoint


def token_answer(**overrides: object) -> Callable[[httpx.Request], httpx.Response]:
    body = {
        "access_token": NEW_ACCESS,
        "refresh_token": NEW_REFRESH,
        "token_type": "bearer",
        "expires_in": 2592000,
        "scope": "email personal daily",
    }
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    return lambda request: httpx.Response(200, json=body)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_authorization_url_has_the_exact_contract_shape() -> None:
    app, _ = app_with(token_answer())
    assert app.authorization_url("st4te") == (
        "https://cloud.ouraring.com/oauth/authorize?client_id=my-client"
        "&redirect_uri=https%3A%2F%2Fapp.example.com%2Fapi%2Fpatient-graph%2Fwearables%2Fcallback%2Foura"
        "&scope=email+personal+daily+heartrate+workout+session&response_type=code&state=st4te"
    )
    assert app.scopes == OAUTH_SCOPES


def test_from_settings_uses_configured_urls(tmp_path) -> None:
    settings = load_settings(
        {
            "OURA_CLIENT_ID": CLIENT_ID,
            "OURA_CLIENT_SECRET": CLIENT_SECRET,
            "OURA_REDIRECT_URI": REDIRECT,
            "OURA_TOKEN_URL": "https://moi.ouraring.com/oauth/v2/ext/oauth-token",
            "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"),
        }
    )
    app = OuraOAuthApp.from_settings(settings)
    assert app.token_url == "https://moi.ouraring.com/oauth/v2/ext/oauth-token"
    assert app.authorization_url("s").startswith(
        "https://cloud.ouraring.com/oauth/authorize?client_id=my-client&"
    )
    assert CLIENT_SECRET not in repr(app)


def test_exchange_code_posts_credentials_in_the_form_body() -> None:
    app, endpoint = app_with(token_answer())
    before = datetime.now(UTC)
    tokens = app.exchange_code(CODE)
    request = endpoint.requests[0]
    assert request.method == "POST" and str(request.url) == "https://api.ouraring.com/oauth/token"
    assert endpoint.form() == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": REDIRECT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert "authorization" not in {k.lower() for k in request.headers}
    assert (tokens.access_token, tokens.refresh_token) == (NEW_ACCESS, NEW_REFRESH)
    assert tokens.scopes == ("email", "personal", "daily")
    assert before + timedelta(days=29) < tokens.expires_at < datetime.now(UTC) + timedelta(days=31)


def test_refresh_posts_refresh_grant_and_returns_rotated_pair() -> None:
    app, endpoint = app_with(token_answer())
    tokens = app.refresh(REFRESH)
    assert endpoint.form() == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert tokens.refresh_token == NEW_REFRESH


def test_token_answer_without_scope_or_expires_in_uses_fallbacks() -> None:
    app, _ = app_with(token_answer(scope=None, expires_in=None))
    before = datetime.now(UTC)
    tokens = app.exchange_code(CODE)
    after = datetime.now(UTC)
    assert tokens.scopes == OAUTH_SCOPES
    # The fallback lifetime counts from the exchange: between the moments just before and just after it.
    assert before + DEFAULT_EXPIRES_IN <= tokens.expires_at <= after + DEFAULT_EXPIRES_IN
    refreshed = app.refresh(REFRESH, fallback_scopes=("daily",))
    assert refreshed.scopes == ("daily",)


def test_refresh_answer_without_refresh_token_keeps_the_old_one() -> None:
    app, _ = app_with(token_answer(refresh_token=None))
    assert app.refresh(REFRESH).refresh_token == REFRESH


def test_exchange_answer_without_refresh_token_is_an_error() -> None:
    app, _ = app_with(token_answer(refresh_token=None))
    with pytest.raises(TokenEndpointError, match="no refresh_token"):
        app.exchange_code(CODE)


def test_fault_invalid_grant_on_refresh_raises_refresh_rejected_without_secrets() -> None:
    description = f"refresh token {REFRESH} was already used"
    app, _ = app_with(
        lambda r: httpx.Response(400, json={"error": "invalid_grant", "error_description": description})
    )
    with pytest.raises(RefreshRejected) as caught:
        app.refresh(REFRESH)
    assert caught.value.error == "invalid_grant" and caught.value.status == 400
    assert "[redacted]" in caught.value.message
    assert_no_secret(str(caught.value))
    assert_no_secret(repr(caught.value))
    assert caught.value.__cause__ is None


def test_fault_invalid_grant_on_code_exchange_is_not_refresh_rejected() -> None:
    app, _ = app_with(
        lambda r: httpx.Response(400, json={"error": "invalid_grant", "error_description": CODE})
    )
    with pytest.raises(TokenEndpointError) as caught:
        app.exchange_code(CODE)
    assert not isinstance(caught.value, RefreshRejected)
    assert_no_secret(str(caught.value))


@pytest.mark.parametrize(
    ("respond", "expected"),
    [
        (lambda r: httpx.Response(500, text="boom"), "answered 500"),
        (lambda r: httpx.Response(400, text=f"<html>{CLIENT_SECRET}</html>"), "answered 400"),
        (lambda r: httpx.Response(200, text="not json"), "other than a token object"),
        (lambda r: httpx.Response(401, json={"error": "invalid_client"}), "invalid_client"),
        (lambda r: httpx.Response(400, json={"detail": "nope"}), "without an OAuth error"),
        (lambda r: httpx.Response(200, json={"token_type": "bearer"}), "no access_token"),
        (lambda r: httpx.Response(400, json={"error": f"weird {REFRESH}"}), "unrecognised error"),
    ],
)
def test_fault_token_endpoint_failures_are_token_endpoint_errors(
    respond: Callable[[httpx.Request], httpx.Response], expected: str
) -> None:
    app, _ = app_with(respond)
    with pytest.raises(TokenEndpointError, match=expected) as caught:
        app.refresh(REFRESH)
    assert not isinstance(caught.value, RefreshRejected)
    assert_no_secret(str(caught.value))


def test_fault_token_endpoint_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {REFRESH}", request=request)

    app, _ = app_with(refuse)
    with pytest.raises(TokenEndpointError, match="ConnectError") as caught:
        app.refresh(REFRESH)
    assert_no_secret(str(caught.value))


def test_revoke_posts_access_token_in_query_and_tolerates_204() -> None:
    for status in (200, 204):
        app, endpoint = app_with(lambda r, status=status: httpx.Response(status))
        app.revoke(ACCESS)
        request = endpoint.requests[0]
        assert request.method == "POST"
        assert request.url.params["access_token"] == ACCESS
        assert str(request.url).startswith("https://api.ouraring.com/oauth/revoke?")


def test_fault_revoke_failure_reports_status_without_the_token() -> None:
    app, _ = app_with(lambda r: httpx.Response(400, json={"error": "invalid_token", "detail": ACCESS}))
    with pytest.raises(TokenEndpointError) as caught:
        app.revoke(ACCESS)
    assert caught.value.status == 400 and "invalid_token" in caught.value.message
    assert_no_secret(str(caught.value))


def test_token_set_repr_and_str_hide_tokens() -> None:
    tokens = TokenSet(NEW_ACCESS, NEW_REFRESH, datetime(2030, 1, 1, tzinfo=UTC), ("daily",))
    for text in (repr(tokens), str(tokens), f"{tokens}", repr([tokens])):
        assert_no_secret(text)
        assert "2030-01-01" in text
    assert tokens.expires_within(timedelta(minutes=5), now=datetime(2029, 12, 31, 23, 56, tzinfo=UTC))
    assert not tokens.expires_within(timedelta(minutes=5), now=datetime(2029, 12, 31, 23, 50, tzinfo=UTC))


def test_oauth_logs_never_contain_secrets(caplog: pytest.LogCaptureFixture) -> None:
    def endpoint(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/revoke"):
            return httpx.Response(200)
        form = parse_qs(request.content.decode())
        if form.get("refresh_token") == [NEW_REFRESH]:
            return httpx.Response(400, json={"error": "invalid_grant", "error_description": NEW_REFRESH})
        return token_answer()(request)

    app, _ = app_with(endpoint)
    with caplog.at_level(logging.DEBUG):
        app.authorization_url("state")
        tokens = app.exchange_code(CODE)
        logging.getLogger("test").info("got %s", tokens)
        app.refresh(REFRESH)
        with pytest.raises(RefreshRejected):
            app.refresh(NEW_REFRESH)
        app.revoke(ACCESS)
    assert any("revoke" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog.text)
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records))


class FixedToken:
    """An AccessTokenSource that cannot refresh: a second 401 surfaces as OuraUnauthorized."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get(self) -> str:
        return self.token

    def force_refresh(self, rejected: str) -> str:
        return self.token


def test_sim_code_flow_exchanges_a_single_use_code(simulator, pipeline_env) -> None:
    app = OuraOAuthApp.from_settings(pipeline_env)
    code = support.authorize_code(app, "alice")
    tokens = app.exchange_code(code)
    assert tokens.scopes == OAUTH_SCOPES
    assert tokens.expires_at > datetime.now(UTC) + timedelta(hours=23)
    assert OuraClient(pipeline_env.api_base_url, FixedToken(tokens.access_token)).personal_info()["id"]
    with pytest.raises(TokenEndpointError) as caught:
        app.exchange_code(code)
    assert not isinstance(caught.value, RefreshRejected) and caught.value.error == "invalid_grant"
    assert code not in str(caught.value)


def test_sim_refresh_rotates_and_a_spent_refresh_token_is_rejected(simulator, pipeline_env) -> None:
    app = OuraOAuthApp.from_settings(pipeline_env)
    first = app.exchange_code(support.authorize_code(app, "bob"))
    second = app.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    with pytest.raises(RefreshRejected) as caught:
        app.refresh(first.refresh_token)
    assert first.refresh_token not in str(caught.value)
    stats = simulator.control.stats()
    assert (stats["refresh_grants"], stats["spent_refresh_reuse"]) == (1, 1)
    with pytest.raises(OuraUnauthorized):
        OuraClient(pipeline_env.api_base_url, FixedToken(first.access_token)).personal_info()
    assert OuraClient(pipeline_env.api_base_url, FixedToken(second.access_token)).personal_info()["id"]


def test_sim_revoke_ends_the_grant(simulator, pipeline_env) -> None:
    app = OuraOAuthApp.from_settings(pipeline_env)
    tokens = app.exchange_code(support.authorize_code(app, "carol"))
    app.revoke(tokens.access_token)
    assert simulator.control.stats()["revocations"] == 1
    with pytest.raises(OuraUnauthorized):
        OuraClient(pipeline_env.api_base_url, FixedToken(tokens.access_token)).personal_info()
    with pytest.raises(RefreshRejected):
        app.refresh(tokens.refresh_token)
