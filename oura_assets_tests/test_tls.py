"""Every httpx client the package makes shares the process's one TLS context (`oura_assets.tls`), and that
context still verifies certificates and host names."""

from __future__ import annotations

import ssl

import pytest

from oura_assets.api.auth import JwksKeys
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.oura.webhooks import WebhookClient
from oura_assets.simulator import SimulatorServer
from oura_assets.tls import tls_context
from oura_assets_tests.conftest import simulator_config

OURA = "https://api.ouraring.com"


def test_the_shared_context_verifies_certificates_and_host_names():
    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.fixture
def contexts_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The TLS contexts made from here on (httpx makes its own through `ssl.create_default_context`)."""
    tls_context()  # the process's own, made before the counting starts if it was not yet
    made: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(args or kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    return made


class _NoToken:
    def get(self) -> str:
        raise AssertionError("not called: the client is only made")

    def refresh(self, rejected: str) -> str:
        raise AssertionError("not called: the client is only made")


def test_clients_made_per_patient_token_request_or_jwks_fetch_make_no_context_of_their_own(contexts_made):
    # Each of these is made often: an OuraClient per patient without a run's shared client, an OAuth client
    # per token request (authlib's OAuth2Client is an httpx client), a webhook client per command.
    with OuraClient(OURA, _NoToken()):
        pass
    with WebhookClient(OURA, "client-id", "client-secret"):
        pass
    app = OuraOAuthApp("id", "secret", "https://app/callback", OURA, OURA + "/token", OURA + "/revoke")
    for _ in range(3):
        with app._session():
            pass
    JwksKeys("https://issuer.example/.well-known/jwks.json")
    assert contexts_made == []


def test_starting_a_server_polls_its_readiness_without_a_context_per_poll(contexts_made):
    with SimulatorServer(simulator_config()):
        pass
    assert contexts_made == []
