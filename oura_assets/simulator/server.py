"""Running the simulator: in a background thread for tests and the demo, or in the foreground for the CLI.

Binds 127.0.0.1 unless told otherwise: the simulator has no authentication on its `/_sim` controls.
"""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Self

import uvicorn

from oura_assets.redaction import install_log_redaction
from oura_assets.serving import ThreadedUvicorn
from oura_assets.simulator.app import create_app
from oura_assets.simulator.config import WEBHOOK_WATCH_S, SimulatorConfig
from oura_assets.simulator.control import SimulatorControl
from oura_assets.simulator.faults import quiet_dropped_connections
from oura_assets.simulator.steady_gc import keep_gc_pauses_short


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
        self._serving: ThreadedUvicorn | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving and return once the simulator answers HTTP."""
        if self._serving is not None:
            return self
        quiet_dropped_connections()
        serving = ThreadedUvicorn(
            self.app,
            name="Oura simulator",
            host=self.host,
            port=self.port,
            ready_path="/_sim/clock",
            start_timeout_s=self._start_timeout_s,
            log_level=None,
            lifespan="off",
            access_log=False,
        )
        self.port = serving.port
        serving.start()
        self._serving = serving
        if self.config.webhook_watch_s:
            self.app.state.webhooks.start_watch(self.config.webhook_watch_s)
        return self

    def stop(self) -> None:
        self.app.state.webhooks.stop_watch()
        if self._serving is not None:
            self._serving.stop()
        self._serving = None

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
    quiet_dropped_connections()
    keep_gc_pauses_short()  # this process only serves the simulator: its caches must not stall it
    app = create_app(config)
    if config.webhook_watch_s:
        app.state.webhooks.start_watch(config.webhook_watch_s)
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off")


def config_from_environment() -> SimulatorConfig:
    """The configuration `load_settings()` describes; demo mode fills the client when nothing else does."""
    import os

    from oura_assets.config import load_settings

    settings = load_settings()
    if not (settings.client_id and settings.client_secret and settings.redirect_uri):
        settings = load_settings({**os.environ, "OURA_ASSETS_DEMO": "1"})
    return dataclasses.replace(SimulatorConfig.from_settings(settings), webhook_watch_s=WEBHOOK_WATCH_S)
