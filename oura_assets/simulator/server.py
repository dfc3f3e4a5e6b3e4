"""Running the simulator: in a background thread for tests and the demo, or in the foreground for the CLI.

Binds 127.0.0.1 unless told otherwise: the simulator has no authentication on its `/_sim` controls.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import httpx
import uvicorn

from oura_assets.redaction import install_log_redaction
from oura_assets.simulator.app import create_app
from oura_assets.simulator.config import SimulatorConfig
from oura_assets.simulator.state import SimulatorControl


class SimulatorServer:
    """uvicorn serving the simulator in a daemon thread; `port=0` picks a free port (`.url` once started)."""

    def __init__(
        self,
        config: SimulatorConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.app = create_app(config)
        self.control: SimulatorControl = self.app.state.control
        self._start_timeout_s = start_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving and return once the simulator answers HTTP."""
        if self._thread is not None:
            return self
        # Embedded in someone else's process (tests, the demo beside the API): leave the process's logging
        # alone. uvicorn's defaults would re-run dictConfig and reset the shared `uvicorn.*` loggers.
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,
            log_level=None,
            lifespan="off",
            access_log=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name=f"oura-simulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Oura simulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        while True:
            try:
                httpx.get(self.url + "/_sim/clock", timeout=1.0)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Oura simulator at {self.url} does not answer") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run(host: str = "127.0.0.1", port: int = 8787, config: SimulatorConfig | None = None) -> None:
    """Serve in the foreground until interrupted; without `config`, the project's own (demo) settings."""
    if config is None:
        config = config_from_environment()
    print(
        f"Oura simulator on http://{host}:{port} (clients: {', '.join(config.clients) or 'none'})", flush=True
    )
    # The one server with an access log: its lines show the query, and Oura's revoke URL carries the token.
    install_log_redaction()
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", lifespan="off")


def config_from_environment() -> SimulatorConfig:
    """The configuration `load_settings()` describes; demo mode fills the client when nothing else does."""
    import os

    from oura_assets.config import load_settings

    settings = load_settings()
    if not (settings.client_id and settings.client_secret and settings.redirect_uri):
        settings = load_settings({**os.environ, "OURA_ASSETS_DEMO": "1"})
    return SimulatorConfig.from_settings(settings)
