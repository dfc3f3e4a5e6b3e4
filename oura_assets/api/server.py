"""Running the connection API under uvicorn: `serve()` for `oura-assets serve`, `ApiServer` in a thread.

`serve()` owns its process and installs the redacting log configuration; uvicorn's access log would
otherwise print the callback's `code=…&state=…` on every connection. `ApiServer` is a guest in someone
else's process (the demo, tests) and leaves its logging configuration alone: the app's lifespan attaches the
redaction filters to the URL-logging loggers, which is all that secrecy needs.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from oura_assets.api.app import REQUIRED_SETTINGS, create_app
from oura_assets.api.limits import UVICORN_LIMITS
from oura_assets.api.logs import uvicorn_log_config
from oura_assets.config import Settings, load_settings


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the connection API until interrupted.

    Settings are read here, before uvicorn starts, so a missing variable is the one-line `ConfigError` the
    CLI prints rather than a traceback from the lifespan.
    """
    settings = load_settings(require=REQUIRED_SETTINGS)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=uvicorn_log_config(),
        server_header=False,
        # Behind a proxy the client address comes from X-Forwarded-For; only trust the local one.
        forwarded_allow_ips="127.0.0.1",
        **UVICORN_LIMITS,
    )


class ApiServer:
    """The API on a loopback port in a daemon thread (demo, tests). `port=0` picks a free port.

    `app_options` go to `create_app` (an injected warehouse, OAuth app or JWT verifier, `lock_wait_s`).
    """

    def __init__(
        self, settings: Settings | None = None, host: str = "127.0.0.1", port: int = 0, **app_options: Any
    ) -> None:
        self.settings = settings
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings, **app_options),
            log_config=None,
            server_header=False,
            lifespan="on",
            **UVICORN_LIMITS,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"oura-api-{self.port}", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the connection API stopped during start-up; see the log above")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the connection API did not answer at {self.url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
