"""Shared fixtures: a simulator on loopback, a throwaway warehouse, settings pointing at both, and patients
connected through the real OAuth code flow (the helpers themselves are in `support.py`, shared with bench/).

The connection API's helpers (keys, hand-built JWTs, a JWKS server, an API harness) are in `api_support.py`.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import settings as hypothesis_settings

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets_tests import postgres_server as postgres
from oura_assets_tests import support
from oura_assets_tests.support import ConnectedPatient

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


@pytest.fixture(params=["duckdb", "ducklake"])
def warehouse_backend(request: pytest.FixtureRequest) -> str:
    """Run the requesting test on both warehouse backends: a DuckDB file and a DuckLake (PostgreSQL catalog,
    local data folder). A test asks for it by naming it; `pipeline_env` then points at that backend."""
    return str(request.param)


_LAKES = itertools.count()


@pytest.fixture
def lake_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """`OURA_ASSETS_WAREHOUSE` / `OURA_ASSETS_LAKE_DATA_PATH` of a new, empty DuckLake (its own catalog
    database in the session's PostgreSQL server, a data folder under `tmp_path`)."""
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    dsn = server.create_database(f"lake_{os.getpid()}_{next(_LAKES)}")
    return {
        "OURA_ASSETS_WAREHOUSE": f"ducklake:postgres:{dsn}",
        "OURA_ASSETS_LAKE_DATA_PATH": str(tmp_path / "lake-data"),
        "OURA_ASSETS_DATA_DIR": str(tmp_path),
    }


@pytest.fixture
def pipeline_env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Environment as a real deployment sets it, pointed at the simulator and a throwaway warehouse (a
    DuckLake when the test also asks for `warehouse_backend` and gets "ducklake")."""
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
    if (
        "warehouse_backend" in request.fixturenames
        and request.getfixturevalue("warehouse_backend") == "ducklake"
    ):
        env.update(request.getfixturevalue("lake_env"))
    monkeypatch.delenv("OURA_ASSETS_DEMO", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(require=("oauth", "tokens"))
    wh.Warehouse(settings.warehouse_path).ensure_schema()
    return settings


@pytest.fixture
def connect_patient(pipeline_env: Settings) -> Callable[..., ConnectedPatient]:
    """Connect a patient through the OAuth code flow and store the tokens as the callback does."""

    def connect(patient_id: str, ring_user: str | None = None, **options: Any) -> ConnectedPatient:
        return support.connect_patient(pipeline_env, patient_id, ring_user, **options)

    return connect


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    """A real PostgreSQL cluster on 127.0.0.1 for this test session (one per xdist worker); tests make their
    own databases in it (`postgres_server.create_database(...)`)."""
    with postgres.running_postgres() as server:
        yield server


@pytest.fixture
def postgres_budget(postgres_server: postgres.PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Oura rate budget in a fresh PostgreSQL database, named in OURA_ASSETS_RATE_BUDGET as a deployment
    on several hosts names it (every process this test starts inherits it); its DSN."""
    dsn = postgres_server.create_database(f"budget_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("OURA_ASSETS_RATE_BUDGET", f"postgres:{dsn}")
    return dsn
