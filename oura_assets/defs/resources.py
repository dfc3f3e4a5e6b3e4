"""Dagster resources: the DuckDB warehouse and the Oura API.

Their knobs (the warehouse file and lock wait, Oura timeouts, retries and concurrency) are resource config,
so a run can change them in its run config and the UI's resource page shows them.

The secrets (Oura client secret, Fernet keys) are not `dg.EnvVar` fields: they come from
`config.load_settings` when a run starts, the same function the connection API calls. Not because an
EnvVar would leak (the UI and run config show an EnvVar's variable name, never its value), but because the
API is not a Dagster process and must agree with the runs on every one of these values: one Fernet key list
encrypts and decrypts the same tokens on both sides. `load_settings` is also where the values get their rules,
which an EnvVar cannot express: demo mode fills them from secrets generated into `data/` (mode 0600), a
Fernet key list is checked when read, and a missing one stops start-up with one line naming the variable. Two
paths to the same secrets would be two places for them to drift apart; one stays.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import dagster as dg
import duckdb
import httpx
from pydantic import Field

from oura_assets import coordination
from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient, RetryPolicy
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.oura.rate_budget import RateBudget
from oura_assets.tls import tls_context
from oura_assets.tokens import PatientTokens, TokenCipher


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse, shared by runs, sensors and the connection API.

    Connections go through `warehouse.Warehouse`: a cross-process lock taken only for the block, so a long run
    never starves the API, and a clear `WarehouseBusy` naming the holder instead of a raw DuckDB lock error.
    It offers the same `connect` / `transaction` as a `Warehouse` (`wh.WarehouseAccess`), so assets hand the
    resource itself to the plain code (sync, rebuild, tokens): one way in.
    """

    database: str = Field(
        description="Path of the DuckDB file, or `ducklake:postgres:<DSN>` for a DuckLake "
        "(`OURA_ASSETS_WAREHOUSE`)."
    )
    lake_data_path: str | None = Field(
        default=None,
        description="A DuckLake's data path: a folder or object storage (`OURA_ASSETS_LAKE_DATA_PATH`).",
    )
    lock_timeout_s: float = Field(
        default=120.0,
        description="How long a block waits for the warehouse lock before `WarehouseBusy` (seconds).",
    )

    def connect(
        self, purpose: str, timeout_s: float | None = None
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection held for the block; `purpose` names the holder to whoever waits."""
        return self._warehouse().connect(purpose, timeout_s)

    def transaction(
        self, purpose: str, timeout_s: float | None = None
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """`connect` inside BEGIN / COMMIT: all of the block's writes land, or none do."""
        return self._warehouse().transaction(purpose, timeout_s)

    def attempts(
        self, purpose: str, timeout_s: float | None = None
    ) -> Iterator[AbstractContextManager[duckdb.DuckDBPyConnection]]:
        """Tries of one transaction block, run again after a DuckLake conflict (`Warehouse.attempts`)."""
        return self._warehouse().attempts(purpose, timeout_s)

    def reporting_waits_to(self, log: wh.WaitLog) -> wh.Warehouse:
        """The warehouse, reporting waits over its slow-wait threshold to `log` (a run's `context.log`)."""
        return self._warehouse().reporting_waits_to(log)

    def _warehouse(self) -> wh.Warehouse:
        # Cheap to build: the lock state lives per file and process inside `warehouse.lock`. The key
        # (OURA_ASSETS_WAREHOUSE_KEY) is a secret: read with the settings, never resource config.
        key = load_settings(require=()).warehouse_key
        return wh.Warehouse(
            self.database, lock_timeout_s=self.lock_timeout_s, key=key, lake_data_path=self.lake_data_path
        )


@dataclass
class OuraSession:
    """One run's view of Oura: a shared HTTP connection pool and a client per patient."""

    settings: Settings
    oauth: OuraOAuthApp
    cipher: TokenCipher
    http: httpx.Client
    retry: RetryPolicy
    budget: RateBudget
    """The application's request budget, shared with every other run and process on this host."""

    def client_for(self, patient_id: str, warehouse: wh.WarehouseAccess) -> OuraClient:
        tokens = PatientTokens(
            patient_id=patient_id,
            warehouse=warehouse,
            cipher=self.cipher,
            oauth_app=self.oauth,
            lock_dir=self.settings.lock_dir,
            coordination=coordination.from_settings(self.settings),
        )
        return OuraClient(
            self.settings.api_base_url, tokens, http=self.http, retry=self.retry, budget=self.budget
        )


class OuraResource(dg.ConfigurableResource):
    """The Oura Cloud API v2 (or the bundled simulator in demo mode), with OAuth refresh per patient.

    URLs, client id and secrets come from `load_settings` (see the module docstring for why).
    """

    request_timeout_s: float = Field(
        default=30.0, description="Timeout of one HTTP request to Oura (seconds)."
    )
    max_attempts: int = Field(
        default=5, description="Attempts per request on 5xx, timeouts and dropped links."
    )
    retry_backoff_s: float = Field(
        default=RetryPolicy.backoff_base_s,
        description="Backoff before the next of those attempts (seconds), doubling each time, full jitter.",
    )
    max_rate_limit_wait_s: float = Field(
        default=300.0,
        description="Total time one client call (all its pages) may wait out 429s and retries (seconds).",
    )
    # Oura allows about 5,000 requests per 5 minutes per application [spec]. Every run and process on the
    # host (or, with OURA_ASSETS_RATE_BUDGET=postgres:..., on every host) paces its requests through one
    # shared budget (oura/rate_budget.py), which learns the real limit
    # from Oura's X-RateLimit-* headers; how many patients are in flight follows the latency it observes.
    rate_limit: int = Field(
        default=5000,
        description="Requests Oura allows this application per `rate_limit_window_s`, until its "
        "X-RateLimit-* headers say otherwise (then the learned limit applies to every process on the host).",
    )
    rate_limit_window_s: float = Field(default=300.0, description="The window of `rate_limit` (seconds).")
    rate_limit_share: float = Field(
        default=0.9,
        description="Fraction of the limit to pace at (0-1]: the rest absorbs jitter in arrival times, so "
        "429s happen only while the limit is being learned.",
    )
    # Within the cap, a run keeps rate x request cycle x 1.5 patients in flight (Little's law; the cycle is
    # Oura's latency plus our own work per request, measured: oura/concurrency.py). 32 covers a cycle of up
    # to ~1.2 s at Oura's documented 5,000 per 5 minutes.
    max_concurrent_patients: int = Field(
        default=32,
        description="Most patients fetched at once in a run; within it, rate x observed request cycle x 1.5.",
    )
    refetch_passes: int = Field(
        default=2,
        description="Further passes in the same run for a collection still failing after the client's "
        "retries (5xx, dropped connections, 429 beyond the wait), before the patient is called partial.",
    )
    refetch_cool_down_s: float = Field(
        default=5.0,
        description="Cool-down before a refetch pass when Oura gave no Retry-After (seconds).",
    )

    @contextmanager
    def session(self) -> Iterator[OuraSession]:
        settings = load_settings(require=("oauth", "tokens"))
        timeout = httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s))
        limits = httpx.Limits(max_connections=max(10, 2 * self.max_concurrent_patients))
        # On this host's SQLite file, or in PostgreSQL for runs on many hosts (OURA_ASSETS_RATE_BUDGET).
        budget = RateBudget.from_settings(
            settings,
            limit=self.rate_limit,
            window_s=self.rate_limit_window_s,
            share=self.rate_limit_share,
        )
        with (
            httpx.Client(
                timeout=timeout,
                limits=limits,
                headers={"User-Agent": "oura-assets"},
                verify=tls_context(),
            ) as http,
            budget,
        ):
            yield OuraSession(
                settings=settings,
                oauth=OuraOAuthApp.from_settings(settings),
                cipher=TokenCipher(settings.token_keys),
                http=http,
                retry=RetryPolicy(
                    attempts=self.max_attempts,
                    backoff_base_s=self.retry_backoff_s,
                    wait_budget_s=self.max_rate_limit_wait_s,
                ),
                budget=budget,
            )
