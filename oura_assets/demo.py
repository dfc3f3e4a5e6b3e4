"""`make demo`: the whole product on loopback, end to end, with nothing configured.

Starts the bundled Oura simulator and the connection API, connects demo patients through the real OAuth code
flow over HTTP (the API's connect and callback routes; the simulator plays Oura's consent page), materializes
the last 30 days as one Dagster run, records the sync events with the same sensor `make dev` runs, and prints
a per-patient summary read back from DuckDB. Safe to run again: reconnecting replaces tokens, and the
warehouse writes are idempotent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import httpx

from oura_assets import warehouse as wh
from oura_assets.config import Settings, load_settings
from oura_assets.defs.partitions import SYNC_IDS_TAG, TRIGGER_TAG, partition_range_tags
from oura_assets.tls import tls_context


class DemoError(RuntimeError):
    """Something the person running the demo can fix; the message says what."""


DEMO_PATIENTS = tuple(f"demo-patient-{n}" for n in range(1, 6))
DEMO_DAYS = 30


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0, verify=tls_context())
    except httpx.HTTPError:
        return False
    return True


@contextlib.contextmanager
def _running(name: str, url: str, probe: str, variable: str, start: Callable[[int], Any]) -> Iterator[str]:
    """A server of ours at `url`: reuse one that already answers `probe` (`make dev`), else start one."""
    if _answers(url + probe):
        print(f"using the {name} already running at {url}")
        yield url
        return
    try:
        server = start(_port(url))
    except (OSError, RuntimeError) as exc:
        raise DemoError(
            f"cannot start the {name} at {url} ({exc}); "
            f"stop what uses that port or set {variable} to a free one"
        ) from None
    print(f"started the {name} at {server.url}")
    try:
        yield server.url
    finally:
        server.stop()


def _simulator(settings: Settings) -> contextlib.AbstractContextManager[str]:
    from oura_assets.simulator import SimulatorConfig, SimulatorServer
    from oura_assets.simulator.config import WEBHOOK_WATCH_S

    # Events about what changes in the simulated data, as Oura sends them (`make dev` subscribes to them).
    config = dataclasses.replace(SimulatorConfig.from_settings(settings), webhook_watch_s=WEBHOOK_WATCH_S)
    return _running(
        "Oura simulator",
        settings.simulator_url,
        "/_sim/stats",
        "OURA_ASSETS_SIMULATOR_URL",
        lambda port: SimulatorServer(config, port=port).start(),
    )


def _api(settings: Settings) -> contextlib.AbstractContextManager[str]:
    from oura_assets.api.server import ApiServer

    return _running(
        "connection API",
        settings.api_url,
        "/healthz",
        "OURA_ASSETS_API_URL",
        lambda port: ApiServer(settings, port=port).start(),
    )


def connect_patient(api_url: str, patient_id: str, ring_user: str, settings: Settings) -> dict:
    """The connect flow a patient's browser goes through, over HTTP: connect -> Oura consent -> callback."""
    from oura_assets.api.auth import mint_dev_token

    jwt = mint_dev_token(settings, patient_id)
    with httpx.Client(timeout=30.0, verify=tls_context()) as http:
        started = http.post(
            f"{api_url}/api/patient-graph/wearables/connect/oura", headers={"Authorization": f"Bearer {jwt}"}
        )
        started.raise_for_status()
        auth_url = started.json()["data"]["authUrl"]
        # The simulator's consent page: `sim_user` is the Oura account that signs in and presses Allow.
        consent = http.get(httpx.URL(auth_url).copy_add_param("sim_user", ring_user))
        if consent.status_code not in (302, 303):
            raise RuntimeError(
                f"the simulator's authorize page answered {consent.status_code}, not a redirect"
            )
        callback = http.get(consent.headers["location"])
        body = callback.json()
        if callback.status_code != 200:
            raise RuntimeError(f"callback for {patient_id} failed: {body.get('error')}")
        return body["data"]


def _ensure_dotenv(root: Path) -> None:
    """Mark this checkout as a demo for the `dagster` CLI, which reads `.env` from the working directory."""
    dotenv = root / ".env"
    if not dotenv.exists():
        dotenv.write_text(
            "# Written by `make demo`: this checkout talks to the bundled Oura simulator.\n"
            "# Delete this file before pointing the checkout at the real Oura API.\n"
            "OURA_ASSETS_DEMO=1\n"
        )


def materialize_range(settings: Settings, start: date, end: date, sync_ids: list[str]) -> dg.DagsterRun:
    """One run over [start, end] for every active patient, on the persistent instance `make dev` shows."""
    from oura_assets.definitions import defs as load_defs
    from oura_assets.defs.sensors import build_event_sensor

    definitions = load_defs()
    job = definitions.resolve_job_def("oura_sync")
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={
            **partition_range_tags(start, end),
            SYNC_IDS_TAG: ",".join(sync_ids),
            TRIGGER_TAG: "demo",
        },
        raise_on_error=False,
    )
    run = instance.get_run_by_id(result.run_id)
    sensor = build_event_sensor()
    with dg.build_sensor_context(instance=instance, resources=definitions.resources) as context:
        sensor(context)
    return run


def print_summary(settings: Settings, run: dg.DagsterRun) -> None:
    store = wh.Warehouse.from_settings(settings)
    with store.connect("demo: read summary") as conn:
        per_patient = conn.execute(
            """
            SELECT c.patient_id, c.status,
                   (SELECT count(*) FROM patient_graph.wearable_data w WHERE w.patient_id = c.patient_id),
                   (SELECT count(DISTINCT metric_type) FROM patient_graph.wearable_data w
                     WHERE w.patient_id = c.patient_id),
                   (SELECT count(*) FROM patient_graph.patient_wearable_daily_stats s
                     WHERE s.patient_id = c.patient_id),
                   (SELECT round(avg(sleep_score), 1) FROM patient_graph.patient_wearable_daily_stats s
                     WHERE s.patient_id = c.patient_id),
                   (SELECT sum(hr_samples) FROM patient_graph.patient_wearable_daily_stats s
                     WHERE s.patient_id = c.patient_id),
                   -- Stored unrounded and weighted by samples here; rounded only for this print.
                   (SELECT round(sum(hr_avg * hr_samples) / sum(hr_samples), 1)
                     FROM patient_graph.patient_wearable_daily_stats s WHERE s.patient_id = c.patient_id),
                   (SELECT payload->>'status' FROM patient_graph.patient_events e
                     WHERE e.patient_id = c.patient_id AND e.event_type = 'wearable_sync'
                     ORDER BY occurred_at DESC LIMIT 1)
            FROM patient_graph.wearable_connections c ORDER BY c.patient_id
            """
        ).fetchall()
        totals = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (fixed names)
            for table in (
                "patient_graph.wearable_data",
                "patient_graph.patient_wearable_daily_stats",
                "patient_graph.patient_events",
                "patient_graph.wearable_connections",
                "oura_raw.heartrate",
            )
        }
    print(f"\nrun {run.run_id} finished {run.status.value}")
    header = (
        "patient",
        "connection",
        "wearable rows",
        "metric types",
        "stat days",
        "avg sleep",
        "hr samples",
        "avg hr (bpm)",
        "sync",
    )
    print("  ".join(f"{h:>14}" for h in header))
    for row in per_patient:
        print("  ".join(f"{'-' if v is None else v!s:>14}" for v in row))
    print("\nrows per table: " + ", ".join(f"{t} {n}" for t, n in totals.items()))
    print(f"warehouse: {settings.warehouse_path}")


def _shipped_dagster_yaml(root: Path) -> Path:
    for candidate in (root / "dagster.yaml", Path(__file__).resolve().parents[1] / "dagster.yaml"):
        if candidate.is_file():
            return candidate
    raise DemoError(f"no dagster.yaml in {root}: run this from the oura_assets checkout")


def ensure_dagster_home(env: MutableMapping[str, str], root: Path) -> Path:
    """The persistent Dagster home `make demo`, `make dev` and `oura-assets backfill` share (data/dagster
    unless `env` names one), so every run shows in the UI, with the repository's `dagster.yaml` installed (run
    monitoring on, telemetry off). Our own home always gets the current file; a home `env` names keeps its
    own file if it has one."""
    default = (root / "data" / "dagster").resolve()
    home = Path(env.setdefault("DAGSTER_HOME", str(default))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    shipped = _shipped_dagster_yaml(root).read_text()
    installed = home / "dagster.yaml"
    if not installed.exists() or (home == default and installed.read_text() != shipped):
        installed.write_text(shipped)
    return home


def _quiet_logs() -> None:
    """The demo prints a report; per-request access logs and client chatter would drown it.

    Called once the servers are up: uvicorn (re)configures its loggers when a server starts.
    """
    # A filter, not `disabled`: creating a Dagster instance runs alembic's fileConfig, which re-enables
    # loggers.
    logging.getLogger("uvicorn.access").addFilter(lambda record: False)
    for name in ("uvicorn.error", "httpx", "oura_assets", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_demo(root: Path | None = None, days: int = DEMO_DAYS) -> int:
    root = root or Path.cwd()
    os.environ.setdefault("OURA_ASSETS_DEMO", "1")
    ensure_dagster_home(os.environ, root)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    # authlib turns its deprecation warnings to "always" when imported; import it first so ours comes first.
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    settings = load_settings(require=("oauth", "tokens", "jwt"))
    wh.Warehouse.from_settings(settings).ensure_schema()
    _ensure_dotenv(root)
    end = datetime.now(UTC).date()
    start = end - timedelta(days=days - 1)
    with _simulator(settings), _api(settings) as api_url:
        _quiet_logs()
        sync_ids = []
        for n, patient_id in enumerate(DEMO_PATIENTS, start=1):
            connected = connect_patient(api_url, patient_id, f"{patient_id}-ring", settings)
            # The one 30-day run carries both of the callback's requests: its initial and first-data syncs.
            sync_ids += [connected.get("syncId", ""), connected.get("firstDataSyncId", "")]
            print(f"connected {patient_id} ({n} of {len(DEMO_PATIENTS)}): status {connected['status']}")
        print(
            f"materializing {start}..{end} for {len(DEMO_PATIENTS)} patients as one Dagster run ...",
            flush=True,
        )
        run = materialize_range(settings, start, end, [s for s in sync_ids if s])
    print_summary(settings, run)
    return 0 if run.status == dg.DagsterRunStatus.SUCCESS else 1
