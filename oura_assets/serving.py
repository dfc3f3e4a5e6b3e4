"""uvicorn in a background thread: how the demo, `make dev` and the tests run the API and the simulator.

Both servers are guests in someone else's process there, so this leaves the host's logging configuration
alone (`log_config=None`: uvicorn would otherwise re-run dictConfig and reset the shared `uvicorn.*`
loggers) and only attaches the redaction filter to the URL-logging loggers (`oura_assets.redaction`), at
start, so no access-log or httpx line shows a code, state or token whichever server started first.

The socket is bound when the object is made, so `.port` and `.url` are known before `start()` and a port
that is taken fails right there with `OSError`. `start()` returns once the app answers 200 on `ready_path`.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.types import ASGIApp

from oura_assets.redaction import install_log_redaction
from oura_assets.tls import tls_context


class ThreadedUvicorn:
    """Serves `app` on `host:port` (`port=0` picks a free one) in a daemon thread.

    One start per object (a stopped one is not restarted). `name` is what error messages call the server.
    `uvicorn_options` go to `uvicorn.Config` as they are (`lifespan`, `access_log`, `server_header`, limits,
    ...); they may override `log_config=None` too.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ready_path: str = "/",
        start_timeout_s: float = 10.0,
        **uvicorn_options: Any,
    ) -> None:
        self.name = name
        self.host = host
        self.ready_path = ready_path
        self.start_timeout_s = start_timeout_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, **{"log_config": None, **uvicorn_options}))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=f"{name}-{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float | None = None) -> Self:
        """Start serving (once) and return when `ready_path` answers 200; RuntimeError if it never does."""
        if self._thread.is_alive():
            return self
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        install_log_redaction()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the {self.name} stopped during start-up; see the log above")
            try:
                answer = httpx.get(self.url + self.ready_path, timeout=1.0, verify=tls_context())
                if answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the {self.name} did not answer at {self.url} within {timeout_s:g} s")

    def stop(self) -> None:
        """Ask uvicorn to finish its requests and exit, wait for the thread (10 s at most), free the port."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
