"""Shared fixtures: a simulator on loopback, a throwaway warehouse, settings pointing at both, and patients
connected through the real OAuth code flow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import settings as hypothesis_settings

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.tokens import PatientTokens, TokenCipher, store_granted_tokens

# Speed is measured in bench/, not asserted in unit tests: Hypothesis's default 200 ms per-example deadline
# turns a busy 2-core CI machine into a DeadlineExceeded/Flaky failure that says nothing about correctness.
hypothesis_settings.register_profile("oura_assets", deadline=None)
hypothesis_settings.load_profile("oura_assets")

TEST_CLIENT_ID = "test-client"
TEST_CLIENT_SECRET = "test-client-secret-0123456789"
TEST_REDIRECT_URI = "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura"


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(
        clients={
            TEST_CLIENT_ID: ClientRegistration(secret=TEST_CLIENT_SECRET, redirect_uris=(TEST_REDIRECT_URI,))
        }
    )
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture
def pipeline_env(tmp_path: Path, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Environment as a real deployment sets it, pointed at the simulator and a throwaway warehouse."""
    env = {
        "OURA_CLIENT_ID": TEST_CLIENT_ID,
        "OURA_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "OURA_REDIRECT_URI": TEST_REDIRECT_URI,
        "OURA_API_BASE_URL": simulator.url,
        "OURA_AUTHORIZE_URL": simulator.url + "/oauth/authorize",
        "OURA_TOKEN_URL": simulator.url + "/oauth/token",
        "OURA_REVOKE_URL": simulator.url + "/oauth/revoke",
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
        "OURA_ASSETS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "OURA_ASSETS_START_DATE": "2024-01-01",
    }
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(require=("oauth", "tokens"))
    wh.Warehouse(settings.warehouse_path).ensure_schema()
    return settings


@dataclass
class ConnectedPatient:
    patient_id: str
    ring_user: str
    access_token: str


def authorize_code(settings: Settings, ring_user: str, state: str = "test-state") -> str:
    """Play the patient's browser at the simulator's consent page and return the authorization code."""
    auth_url = OuraOAuthApp.from_settings(settings).authorization_url(state)
    answer = httpx.get(httpx.URL(auth_url).copy_add_param("sim_user", ring_user), follow_redirects=False)
    assert answer.status_code in (302, 303), answer.text
    location = httpx.URL(answer.headers["location"])
    assert location.params["state"] == state
    return location.params["code"]


@pytest.fixture
def connect_patient(pipeline_env: Settings) -> Callable[..., ConnectedPatient]:
    """Connect a patient through the OAuth code flow and store the tokens as the callback does."""
    settings = pipeline_env
    store = wh.Warehouse(settings.warehouse_path)
    oauth = OuraOAuthApp.from_settings(settings)
    cipher = TokenCipher(settings.token_keys)

    def connect(patient_id: str, ring_user: str | None = None) -> ConnectedPatient:
        ring_user = ring_user or f"{patient_id}-ring"
        tokens = oauth.exchange_code(authorize_code(settings, ring_user))
        with store.transaction("test: connect patient") as conn:
            store_granted_tokens(
                conn, patient_id, tokens, cipher, oura_user_id=None, connected_at=datetime.now(UTC)
            )
        source = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        info = OuraClient(settings.api_base_url, source).personal_info()
        with store.transaction("test: oura user id") as conn:
            conn.execute(
                "UPDATE patient_graph.wearable_connections SET oura_user_id = ? WHERE patient_id = ?",
                [info["id"], patient_id],
            )
        return ConnectedPatient(patient_id, ring_user, tokens.access_token)

    return connect
