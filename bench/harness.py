"""Shared setup for the benchmarks: a simulator on loopback, a throwaway environment, connected patients,
and the process measurements (wall time, peak RSS) the benchmarks quote.

Connecting patients, reading and snapshotting tables and running the sync job are the tests' own helpers
(`oura_assets_tests/support.py`: plain functions, no pytest), so a benchmark compares tables exactly as the
tests do. The simulator and the environment mirror `oura_assets_tests/conftest.py`'s fixtures with the bench's
own client and a frozen data clock.
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

from cryptography.fernet import Fernet

from oura_assets.config import Settings, load_settings
from oura_assets.simulator import ClientRegistration, SimulatorConfig, SimulatorServer
from oura_assets.simulator.steady_gc import keep_gc_pauses_short

# `make bench` runs bench/run.py as a script from a checkout, and `oura_assets_tests` is not installed (the
# package build leaves it out), so the checkout's root goes on the path for `from oura_assets_tests import
# support` in run.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret-0123456789"
REDIRECT_URI = "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura"
# The simulator's data clock is frozen here, so every run of the benchmark sees the same documents (late
# sync and revisions depend on the data clock) whatever the date it is run on.
DATA_NOW = datetime(2024, 7, 15, 12, tzinfo=UTC)
START_DATE = "2024-01-01"
# Variables this harness sets; anything else pointing at a real deployment is removed for the run.
_CLEARED = ("OURA_ASSETS_DEMO", "OURA_ASSETS_DATA_DIR", "DAGSTER_HOME")


def start_simulator(seed: int = 0, **config_overrides: Any) -> SimulatorServer:
    """A fresh simulator on 127.0.0.1 (free port) with the bench client and a frozen data clock.

    `seed` seeds the fault dice only; the data depends on user names and days alone. `config_overrides` are
    further `SimulatorConfig` fields (its rate limits, say).
    """
    config = SimulatorConfig(
        clients={CLIENT_ID: ClientRegistration(secret=CLIENT_SECRET, redirect_uris=(REDIRECT_URI,))},
        seed=seed,
        **config_overrides,
    )
    # The benchmark's parent process only hosts the simulator while its children run the pipeline: like the
    # standalone simulator, it keeps its GC pauses short (a long one answers 429 to spread-out requests).
    keep_gc_pauses_short()
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
