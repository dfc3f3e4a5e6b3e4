"""The API as it is deployed: uvicorn over real HTTP, settings from the environment, JWTs checked against a
JWKS endpoint, access logs redacted, and the warehouse shared with another writing process."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn.logging
from starlette.testclient import TestClient

from oura_assets.api.auth import mint_dev_token
from oura_assets.api.logs import uvicorn_log_config
from oura_assets.api.server import ApiServer
from oura_assets.config import ConfigError, Settings, load_settings
from oura_assets.redaction import RedactQueryFilter
from oura_assets.simulator import SimulatorConfig, SimulatorServer
from oura_assets.tls import tls_context
from oura_assets_tests.api_support import ISSUER, JwksServer, claims, jwks_server, new_key, public, sign

W = "/api/patient-graph/wearables"
KEY = new_key()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server([public(KEY)]) as server:
        yield server


@pytest.fixture
def api_settings(pipeline_env: Settings, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A real deployment's environment: Clerk's JWKS and issuer, Oura at the simulator."""
    monkeypatch.setenv("CLERK_JWKS_URL", jwks.url)
    monkeypatch.setenv("CLERK_ISSUER", ISSUER)
    return load_settings(require=("oauth", "tokens", "jwt"))


def bearer(patient_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign(KEY, claims(patient_id))}"}


def connect_over_http(base: str, headers: dict[str, str], ring_user: str) -> tuple[dict[str, Any], str]:
    """connect -> the simulator's consent page -> the callback, as the patient's browser does it."""
    auth_url = httpx.post(f"{base}{W}/connect/oura", headers=headers).json()["data"]["authUrl"]
    consent = httpx.get(httpx.URL(auth_url).copy_merge_params({"sim_user": ring_user}))
    assert consent.status_code == 302, consent.text
    location = consent.headers["location"]
    query = location.split("?", 1)[1]
    answer = httpx.get(f"{base}{W}/callback/oura?{query}")
    assert answer.status_code == 200, answer.text
    return answer.json()["data"], query


def test_flow_over_real_http_with_jwks_and_redacted_access_log(
    api_settings: Settings, jwks: JwksServer, simulator: SimulatorServer
) -> None:
    captured = io.StringIO()
    with ApiServer(api_settings) as server:
        handler = logging.StreamHandler(captured)
        handler.setFormatter(
            uvicorn.logging.AccessFormatter(
                '%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False
            )
        )
        access = logging.getLogger("uvicorn.access")
        # ApiServer leaves the host's logging alone; this test is the host and wants the access log at INFO.
        level = access.level
        access.setLevel(logging.INFO)
        access.addHandler(handler)
        try:
            base, headers = server.url, bearer("patient-a")
            data, callback_query = connect_over_http(base, headers, "alice-ring")
            assert data["status"] == "active"
            synced = httpx.post(f"{base}{W}/sync", headers=headers, json={"source": "oura"})
            assert synced.status_code == 202
            status = httpx.get(f"{base}{W}/sync/{synced.json()['data']['syncId']}", headers=headers)
            assert status.json()["data"]["status"] == "queued"
            listing = httpx.get(f"{base}{W}/connections", headers=headers).json()["data"]["connections"]
            assert [c["status"] for c in listing] == ["active"]
            gone = httpx.delete(f"{base}{W}/connections/oura", headers=headers)
            assert gone.json()["data"]["status"] == "disconnected"
            assert httpx.get(f"{base}{W}/connections").status_code == 401
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    assert jwks.fetches == 1  # one JWKS fetch served every request
    lines = captured.getvalue().splitlines()
    callback_lines = [line for line in lines if "/callback/oura" in line]
    assert callback_lines
    assert all("/callback/oura?<redacted>" in line for line in callback_lines)
    code, state = (dict(p.split("=", 1) for p in callback_query.split("&"))[k] for k in ("code", "state"))
    text = captured.getvalue()
    assert code not in text
    assert state not in text
    assert any(
        '"DELETE /api/patient-graph/wearables/connections/oura HTTP/1.1" 200' in line for line in lines
    )


def test_redaction_filter_on_uvicorn_access_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5555",
            "GET",
            "/api/patient-graph/wearables/callback/oura?code=abc&state=xyz",
            "1.1",
            200,
        ),
        None,
    )
    assert RedactQueryFilter().filter(record)
    formatter = uvicorn.logging.AccessFormatter('"%(request_line)s" %(status_code)s', use_colors=False)
    line = formatter.format(record)
    assert line == '"GET /api/patient-graph/wearables/callback/oura?<redacted> HTTP/1.1" 200 OK'


def test_serve_log_config_redacts_the_access_log() -> None:
    config = uvicorn_log_config()
    assert config["loggers"]["uvicorn.access"]["filters"] == ["redact_query"]
    assert config["loggers"]["httpx"]["filters"] == ["redact_query"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_env(tmp_path: Path, simulator_url: str, api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OURA_", "CLERK_"))}
    env.update(
        {
            "OURA_ASSETS_DEMO": "1",
            "OURA_ASSETS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
            "OURA_ASSETS_SIMULATOR_URL": simulator_url,
            "OURA_ASSETS_API_URL": f"http://127.0.0.1:{api_port}",
        }
    )
    return env


def test_oura_assets_serve_in_demo_mode_with_dev_token_and_redacted_stdout(tmp_path: Path) -> None:
    """`oura-assets serve` as a process: settings from the environment, a dev token, access log on stdout."""
    port = free_port()
    settings = load_settings(demo_env(tmp_path, "http://127.0.0.1:1", port))
    with SimulatorServer(SimulatorConfig.from_settings(settings)) as simulator:
        env = demo_env(tmp_path, simulator.url, port)
        settings = load_settings(env)
        process = subprocess.Popen(
            [sys.executable, "-m", "oura_assets.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "oura-assets serve did not answer"
                time.sleep(0.1)
            token = mint_dev_token(settings, "demo-patient-1")
            data, callback_query = connect_over_http(base, {"Authorization": f"Bearer {token}"}, "demo-ring")
            assert (data["status"], data["patientId"]) == ("active", "demo-patient-1")
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=20)
    assert "/callback/oura?<redacted>" in output
    for part in callback_query.split("&"):
        assert part.split("=", 1)[1] not in output
    assert token not in output


def test_app_reads_settings_at_start_and_names_a_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oura_assets.api

    for name in list(os.environ):
        if name.startswith(("OURA_", "CLERK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OURA_ASSETS_WAREHOUSE", str(tmp_path / "warehouse.duckdb"))
    with pytest.raises(ConfigError, match="OURA_CLIENT_ID"), TestClient(oura_assets.api.app):
        pass
    monkeypatch.setenv("OURA_ASSETS_DEMO", "1")
    with TestClient(oura_assets.api.app) as client:
        assert client.get("/healthz").status_code == 200


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from oura_assets import warehouse as wh
    store = wh.Warehouse(sys.argv[1], lock_timeout_s=30)
    stop_file, give_up = sys.argv[2], time.monotonic() + 20
    n = 0
    print("started", flush=True)
    while not os.path.exists(stop_file) and time.monotonic() < give_up:
        with store.transaction("hammer: another process writing") as conn:
            wh.record_event(conn, patient_id="writer", event_type="wearable_sync", payload={"n": n})
            time.sleep(0.02)  # a write that takes a while, as a run's does
        n += 1
        time.sleep(0.02)
    print(n, flush=True)
    """
)


def hammer(base: str, headers: dict[str, str], sync_id: str, rounds: int) -> list[httpx.Response]:
    def one(n: int) -> httpx.Response:
        # A client (and connection) of its own per request; the TLS context is the process's one (tls.py).
        with httpx.Client(base_url=base, headers=headers, timeout=30, verify=tls_context()) as http:
            kind = n % 3
            if kind == 0:
                return http.post(
                    f"{W}/sync", json={"source": "oura", "startDate": "2024-06-10", "endDate": "2024-06-16"}
                )
            if kind == 1:
                return http.get(f"{W}/sync/{sync_id}")
            return http.get(f"{W}/connections")

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(one, range(rounds)))


@pytest.mark.slow
@pytest.mark.parametrize("lock_wait_s", [10.0, 0.001], ids=["normal-bound", "tiny-bound"])
def test_api_writes_while_another_process_holds_and_writes_the_warehouse(
    api_settings: Settings, simulator: SimulatorServer, lock_wait_s: float, tmp_path: Path
) -> None:
    headers = bearer("patient-a")
    with ApiServer(api_settings, lock_wait_s=lock_wait_s) as server:
        data, _ = connect_over_http(server.url, headers, "alice-ring")
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(api_settings.warehouse_path), str(tmp_path / "stop")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "started"
            answers = hammer(server.url, headers, data["syncId"], rounds=18)
            assert writer.poll() is None  # still writing when the last request was answered
            (tmp_path / "stop").touch()
            writer_rounds = int(writer.communicate(timeout=30)[0].strip())
        finally:
            if writer.poll() is None:
                writer.kill()
    assert writer.returncode == 0
    assert writer_rounds >= 1  # it wrote, and (poll above) was still writing when the hammering ended
    statuses = [a.status_code for a in answers]
    assert all(status in (200, 202, 503) for status in statuses), statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"]["code"] == "warehouse_busy"
            assert int(answer.headers["retry-after"]) >= 1
            assert "Traceback" not in answer.text
    if lock_wait_s >= 1:
        assert 503 not in statuses, statuses
    else:
        assert 503 in statuses, statuses  # a bound this tiny must be hit while the writer holds the lock
    accepted = sum(1 for a in answers if a.status_code == 202)
    from oura_assets import warehouse as wh

    with wh.Warehouse(api_settings.warehouse_path).connect("test: count") as conn:
        (queued,) = conn.execute(
            "SELECT count(*) FROM patient_graph.sync_requests WHERE start_day = DATE '2024-06-10'"
        ).fetchone()
    assert queued == accepted  # every 202 was written, no 503 was


def test_api_server_threads_do_not_leak(api_settings: Settings) -> None:
    before = threading.active_count()
    with ApiServer(api_settings) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    time.sleep(0.2)
    assert threading.active_count() <= before
