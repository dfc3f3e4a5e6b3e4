"""Running the connection API under uvicorn: `serve()` for `oura-assets serve`, `ApiServer` in a thread.

`serve()` owns its process and installs the redacting log configuration; uvicorn's access log would
otherwise print the callback's `code=…&state=…` on every connection. `ApiServer` is a guest in someone
else's process (the demo, tests) and leaves its logging configuration alone (see `oura_assets.serving`): the
redaction filters on the URL-logging loggers are all that secrecy needs there.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from oura_assets.api.app import REQUIRED_SETTINGS, create_app
from oura_assets.api.first_data import lane_enabled
from oura_assets.api.limits import UVICORN_LIMITS
from oura_assets.api.logs import uvicorn_log_config
from oura_assets.config import Settings, load_settings
from oura_assets.serving import ThreadedUvicorn


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the connection API until interrupted.

    Settings are read here, before uvicorn starts, so a missing variable is the one-line `ConfigError` the
    CLI prints rather than a traceback from the lifespan.
    """
    settings = load_settings(require=REQUIRED_SETTINGS)
    uvicorn.run(
        create_app(settings, first_data_inline=lane_enabled()),
        host=host,
        port=port,
        log_config=uvicorn_log_config(),
        server_header=False,
        # Behind a proxy the client address comes from X-Forwarded-For; only trust the local one.
        forwarded_allow_ips="127.0.0.1",
        **UVICORN_LIMITS,
    )


class ApiServer(ThreadedUvicorn):
    """The API on a loopback port in a daemon thread (demo, tests). `port=0` picks a free port.

    `app_options` go to `create_app` (an injected warehouse, OAuth app or JWT verifier, `lock_wait_s`).
    """

    def __init__(
        self, settings: Settings | None = None, host: str = "127.0.0.1", port: int = 0, **app_options: Any
    ) -> None:
        self.settings = settings
        super().__init__(
            create_app(settings, **app_options),
            name="connection API",
            host=host,
            port=port,
            ready_path="/healthz",
            start_timeout_s=20.0,
            server_header=False,
            lifespan="on",
            **UVICORN_LIMITS,
        )
