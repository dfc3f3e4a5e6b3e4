"""Shared setup for the benchmarks: a simulator on loopback, a throwaway environment, connected patients,
table snapshots and the process measurements (wall time, peak RSS) the benchmarks quote.

Mirrors `oura_assets_tests/conftest.py` (the `simulator`, `pipeline_env` and `connect_patient` fixtures)
without importing from the tests: benchmarks must not depend on pytest fixtures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import httpx
from cryptography.fernet import Fernet

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.tokens import PatientTokens, TokenCipher, store_granted_tokens

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret-0123456789"
REDIRECT_URI = "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura"
# The simulator's data clock is frozen here, so every run of the benchmark sees the same documents (late
# sync and revisions depend on the data clock) whatever the date it is run on.
DATA_NOW = datetime(2024, 7, 15, 12, tzinfo=UTC)
START_DATE = "2024-01-01"
# Columns that record when something happened, not what: left out of every comparison.
VOLATILE = frozenset(
    {"synced_at", "updated_at", "fetched_at", "recorded_at", "occurred_at", "last_synced_at"}
)
# Variables this harness sets; anything else pointing at a real deployment is removed for the run.
_CLEARED = ("OURA_ASSETS_DEMO", "OURA_ASSETS_DATA_DIR", "DAGSTER_HOME")


def start_simulator(seed: int = 0) -> SimulatorServer:
    """A fresh simulator on 127.0.0.1 (free port) with the bench client and a frozen data clock.

    `seed` seeds the fault dice only; the data depends on user names and days alone.
    """
    config = SimulatorConfig(
        clients={CLIENT_ID: ClientRegistration(secret=CLIENT_SECRET, redirect_uris=(REDIRECT_URI,))},
        seed=seed,
    )
    server = SimulatorServer(config, host="127.0.0.1").start()
    server.control.set_clock(DATA_NOW, frozen=True)
    return server


def pipeline_env(simulator_url: str, warehouse_path: Path) -> dict[str, str]:
    """The environment a deployment sets, pointed at the simulator and a throwaway warehouse."""
    return {
        "OURA_CLIENT_ID": CLIENT_ID,
        "OURA_CLIENT_SECRET": CLIENT_SECRET,
        "OURA_REDIRECT_URI": REDIRECT_URI,
        "OURA_API_BASE_URL": simulator_url,
        "OURA_AUTHORIZE_URL": simulator_url + "/oauth/authorize",
        "OURA_TOKEN_URL": simulator_url + "/oauth/token",
        "OURA_REVOKE_URL": simulator_url + "/oauth/revoke",
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
        "OURA_ASSETS_WAREHOUSE": str(warehouse_path),
        "OURA_ASSETS_START_DATE": START_DATE,
    }


def child_environ(env: Mapping[str, str]) -> dict[str, str]:
    """os.environ with `env` applied and the variables that could point at real state removed."""
    out = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    out.update(env)
    return out


@contextlib.contextmanager
def applied_env(env: Mapping[str, str]) -> Iterator[Settings]:
    """Set `env` in this process for the block (restoring the previous values after) and yield settings."""
    saved = {name: os.environ.get(name) for name in (*env, *_CLEARED)}
    try:
        for name in _CLEARED:
            os.environ.pop(name, None)
        os.environ.update(env)
        yield load_settings(require=("oauth", "tokens"))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _authorize_code(settings: Settings, ring_user: str, state: str = "bench-state") -> str:
    """Play the patient's browser at the simulator's consent page; return the authorization code."""
    auth_url = OuraOAuthApp.from_settings(settings).authorization_url(state)
    answer = httpx.get(
        httpx.URL(auth_url).copy_add_param("sim_user", ring_user), follow_redirects=False, timeout=10
    )
    if answer.status_code not in (302, 303):
        raise RuntimeError(f"consent answered {answer.status_code}: {answer.text[:200]}")
    return httpx.URL(answer.headers["location"]).params["code"]


def connect_patients(settings: Settings, patient_ids: list[str]) -> None:
    """Connect each patient through the OAuth code flow and store the tokens as the API callback does."""
    store = wh.Warehouse(settings.warehouse_path)
    store.ensure_schema()
    oauth = OuraOAuthApp.from_settings(settings)
    cipher = TokenCipher(settings.token_keys)
    for patient_id in patient_ids:
        tokens = oauth.exchange_code(_authorize_code(settings, f"{patient_id}-ring"))
        with store.transaction("bench: connect patient") as conn:
            store_granted_tokens(
                conn, patient_id, tokens, cipher, oura_user_id=None, connected_at=datetime.now(UTC)
            )
        source = PatientTokens(
            patient_id=patient_id, warehouse=store, cipher=cipher, oauth_app=oauth, lock_dir=settings.lock_dir
        )
        with OuraClient(settings.api_base_url, source) as client:
            info = client.personal_info()
        with store.transaction("bench: oura user id") as conn:
            conn.execute(
                "UPDATE patient_graph.wearable_connections SET oura_user_id = ? WHERE patient_id = ?",
                [info["id"], patient_id],
            )


def table_rows(path: Path, table: str) -> list[tuple]:
    """A table's rows without its volatile columns, sorted, read from a closed warehouse file."""
    schema, name = table.split(".")
    with duckdb.connect(str(path), read_only=True) as conn:
        columns = [
            c
            for (c,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                [schema, name],
            ).fetchall()
            if c not in VOLATILE
        ]
        cols = ", ".join(f'"{c}"' for c in columns)
        return conn.execute(f"SELECT {cols} FROM {table} ORDER BY ALL").fetchall()  # noqa: S608 (catalog)


DATA_TABLES = (
    "patient_graph.wearable_data",
    "patient_graph.patient_wearable_daily_stats",
    "oura_raw.daily_readiness",
    "oura_raw.daily_sleep",
    "oura_raw.sleep",
    "oura_raw.daily_activity",
    "oura_raw.heartrate",
)


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """Every data table (raw and patient graph) without its volatile columns."""
    return {table: table_rows(path, table) for table in DATA_TABLES}


# --- process measurements -------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    kb = _status_kb("VmRSS")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (MiB)."""
    kb = _status_kb("VmHWM")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "mem_gb": mem_gb,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "duckdb": version("duckdb"),
        "polars": version("polars"),
        "dagster": version("dagster"),
        "httpx": version("httpx"),
    }
