"""Transport-level faults and request accounting, as a raw ASGI wrapper around the simulator app.

Raw ASGI because a dropped connection cannot be expressed as a response: the wrapper lets the app send its
status line and part of the body, then raises, so uvicorn closes the socket mid-response and the client sees
an incomplete message (httpx: `RemoteProtocolError`). Latency, 5xx answers and drops apply to the Oura data
routes (`/v2/...`) only; the OAuth and `/_sim` routes stay reliable so a fault test exercises the client's
data path, not its ability to connect.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oura_assets.simulator.fault_settings import FaultSettings
from oura_assets.simulator.stats import RequestStats

# The ASGI scope key under which a request's arrival at "Oura" (epoch seconds) is handed to the app, whose
# rate limit counts the request at that moment (`RateLimitWindows.check`).
ARRIVED = "oura_simulator.arrived"

_DOCUMENT_PATH = re.compile(r"^(/v2/usercollection/[^/]+)/[^/]+$")


class DroppedConnection(Exception):
    """Raised on purpose to make uvicorn abort the connection mid-response."""


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for every connection dropped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


def quiet_dropped_connections() -> None:
    """Installed by whoever starts a server (idempotent); importing the simulator changes no logger."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


def route_key(method: str, path: str) -> str:
    """The route template a path belongs to, for the request counts in `/_sim/stats`."""
    match = _DOCUMENT_PATH.match(path)
    if match and not path.startswith("/v2/usercollection/personal_info"):
        path = match.group(1) + "/{document_id}"
    return f"{method} {path}"


_ERROR_BODIES: dict[int, tuple[bytes, bytes]] = {
    500: (b"application/json", b'{"status":500,"title":"Internal Server Error","detail":"Internal error."}'),
    502: (b"text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    503: (b"application/json", b'{"status":503,"title":"Service Unavailable","detail":"Try again later."}'),
}


class FaultInjection:
    """Wraps the app: counts every request by route and status, and injects the configured faults."""

    def __init__(self, app: ASGIApp, faults: FaultSettings, stats: RequestStats) -> None:
        self.app = app
        self.faults = faults
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.time()  # `answered` reports when a request reached Oura, not when it was answered
        key = route_key(scope["method"], scope["path"])
        status: dict[str, Any] = {"code": 0}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if scope["path"].startswith("/v2/"):
            faults = self.faults.current()
            if faults.latency_ms > 0:
                # The latency stands for the network's: the request reaches Oura that long after it was sent,
                # then, not whenever this process's one event loop wakes from the sleep. A loop busy with
                # another answer (a cache-missing page) or a GC pause wakes many sleepers at once; stamped
                # on waking, requests that reached "Oura" spread out would count as one bunch against a
                # rolling rate window, which real Oura's edge never sees.
                arrived += faults.latency_ms / 1000
                await asyncio.sleep(max(0.0, arrived - time.time()))
            scope[ARRIVED] = arrived  # what the data routes' rate limit counts the request at
            if self.faults.roll(faults.error_rate):
                code = self.faults.choice((500, 502, 503))
                self.stats.count("injected_errors")
                self.stats.record(key, code, arrived)
                await self._error(send, code)
                return
            if self.faults.roll(faults.drop_rate):
                self.stats.count("dropped")
                self.stats.record(key, "dropped", arrived)
                await self.app(scope, receive, self._dropping(send))
                return
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.stats.record(key, status["code"] or 500, arrived)

    @staticmethod
    async def _error(send: Send, code: int) -> None:
        content_type, body = _ERROR_BODIES[code]
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if code == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _dropping(send: Send) -> Send:
        async def dropping_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
                return
            body = message.get("body", b"")
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            raise DroppedConnection("connection dropped by the simulator's drop_rate fault")

        return dropping_send
