"""The one envelope every answer uses (CONTRACT §3), and the errors that become it.

Success is `{"success": true, "data": {...}}`, failure `{"success": false, "error": {"code", "message"}}` —
including Starlette's own 404/405, a busy warehouse (503 + `Retry-After`) and anything unexpected (500). An
unexpected exception is logged by type and stack frames only: its message could quote a URL or a payload
with a token in it, so neither the log nor the answer repeats it.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("oura_assets.api")


class ApiError(Exception):
    """An answer other than success, with a stable machine-readable `code` and a message safe to show."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


# Answers carry auth URLs (with a state) and per-patient data: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}


def ok(data: Mapping[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": dict(data)}, status_code=status, headers=NO_STORE)


def failure(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": {"code": code, "message": message}},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


def retry_after(seconds: float | None) -> str:
    """Whole seconds for a `Retry-After` header, at least 1."""
    if seconds is None or not math.isfinite(seconds):
        return "1"
    return str(max(1, math.ceil(seconds)))


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return failure(exc.status, exc.code, exc.message, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (unknown path, wrong method) in our envelope instead of plain text."""
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    messages = {
        404: "no such route or resource",
        405: f"{request.method} is not allowed here",
    }
    message = messages.get(exc.status_code) or (exc.detail if isinstance(exc.detail, str) else code)
    return failure(exc.status_code, code, message, exc.headers)


class CatchAllMiddleware:
    """Turns an exception no handler caught into a 500 envelope, logged without its message.

    Plain ASGI rather than Starlette's ServerErrorMiddleware, which re-raises so that the server logs the
    exception text (and that text is exactly what must not reach a log).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
            log.error(
                "unhandled %s answering %s %s\n%s",
                type(exc).__name__,
                scope.get("method"),
                scope["path"],
                frames,
            )
            if started:
                return  # too late for a clean answer; the connection simply ends
            response = failure(500, "internal_error", "something went wrong on our side; try again later")
            await response(scope, receive, send)
