"""Dagster resources: the DuckDB warehouse and the Oura API.

Secrets (client secret, Fernet keys) are deliberately not resource config: they are read from the environment
by `config.load_settings` when a run starts, through the same code the connection API uses, so both processes
agree on them and no secret ever reaches run config, the UI's resource page or event logs. The resources carry
only non-secret knobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import httpx
from dagster_duckdb import DuckDBResource

from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.tokens import PatientTokens, TokenCipher
from oura_assets.warehouse import Warehouse


class WarehouseResource(DuckDBResource):
    """The DuckDB warehouse, shared by runs, sensors and the connection API.

    A DuckDBResource whose connections go through `Warehouse.connect`: a cross-process lock taken only for the
    block, so a long run never starves the API, and a clear `WarehouseBusy` naming the holder instead of a
    raw DuckDB lock error.
    """

    lock_timeout_s: float = 120.0

    def warehouse(self) -> Warehouse:
        # The key (OURA_ASSETS_WAREHOUSE_KEY) is a secret: read with the settings, never resource config.
        key = load_settings().warehouse_key
        return Warehouse(self.database, lock_timeout_s=self.lock_timeout_s, key=key)

    @contextmanager
    def get_connection(self, purpose: str = "dagster"):  # type: ignore[override]
        with self.warehouse().connect(purpose) as conn:
            yield conn


@dataclass
class OuraSession:
    """One run's view of Oura: a shared HTTP connection pool and a client per patient."""

    settings: Settings
    oauth: OuraOAuthApp
    cipher: TokenCipher
    http: httpx.Client
    retry: RetryPolicy

    def client_for(self, patient_id: str, warehouse: Warehouse) -> OuraClient:
        tokens = PatientTokens(
            patient_id=patient_id,
            warehouse=warehouse,
            cipher=self.cipher,
            oauth_app=self.oauth,
            lock_dir=self.settings.lock_dir,
            journal_dir=self.settings.token_journal_dir,
        )
        return OuraClient(self.settings.api_base_url, tokens, http=self.http, retry=self.retry)


class OuraResource(dg.ConfigurableResource):
    """The Oura Cloud API v2 (or the bundled simulator in demo mode), with OAuth refresh per patient."""

    request_timeout_s: float = 30.0
    max_attempts: int = 5
    max_rate_limit_wait_s: float = 300.0
    # Patients fetched at once in a run. Oura allows about 5,000 requests per 5 minutes per application;
    # 4 patients in flight at a few hundred ms per request stays well inside it, and 429s are waited out.
    max_concurrent_patients: int = 4

    @contextmanager
    def session(self) -> Iterator[OuraSession]:
        settings = load_settings(require=("oauth", "tokens"))
        timeout = httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s))
        limits = httpx.Limits(max_connections=max(10, 2 * self.max_concurrent_patients))
        with httpx.Client(timeout=timeout, limits=limits, headers={"User-Agent": "oura-assets"}) as http:
            yield OuraSession(
                settings=settings,
                oauth=OuraOAuthApp.from_settings(settings),
                cipher=TokenCipher(settings.token_keys),
                http=http,
                retry=RetryPolicy(attempts=self.max_attempts, wait_budget_s=self.max_rate_limit_wait_s),
            )
