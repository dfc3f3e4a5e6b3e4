"""How big a request the connection API accepts, and the middleware that refuses the rest before routing.

Every route takes a few hundred bytes at most (a JSON body like `{"source": "oura"}`, a Bearer JWT of a few
KiB, a callback query with a code and a state), so the limits are small and checked before authentication:
an anonymous caller cannot make the API verify a 64 MB header or hold a 200 MB body in memory.

Two layers. The server (uvicorn, see `UVICORN_LIMITS`) drops a request head too big to buffer at all; this
module's middleware answers anything over the app's own, tighter limits in the JSON envelope: 431 for headers,
414 for the URL, 413 for the body. The body is never read whole to be measured: a declared Content-Length
over the cap is refused before a byte is read, and a chunked body is counted as it streams in and refused
on the chunk that crosses the cap (the rest stays unread).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oura_assets.api.responses import ApiError, failure

MAX_BODY_BYTES = 16_384
MAX_HEADER_COUNT = 64
# Names and values together; a Clerk JWT is 1-3 KiB, cookies a browser might send a few more.
MAX_HEADER_BYTES = 16_384
MAX_URL_BYTES = 8_192
# What the server buffers while waiting for a complete request head (request line and headers). Above the
# app's own limits so that a merely large head still gets the 431/414 envelope from the middleware; only a
# head no client of ours could send is cut off by the server (a plain 400 from uvicorn, connection closed).
SERVER_MAX_HEAD_BYTES = 65_536
# uvicorn.Config keyword arguments. h11 because httptools (uvicorn's choice when it is installed) has no
# head-size bound at all: that is how a 64 MB header got through.
UVICORN_LIMITS: dict[str, Any] = {"http": "h11", "h11_max_incomplete_event_size": SERVER_MAX_HEAD_BYTES}


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "request_too_large", f"the body is larger than {limit} bytes")


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length, None when absent; ApiError 400 when it is not one non-negative integer."""
    values = {value.strip() for name, value in headers if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not all(value.isdigit() for value in values):
        raise ApiError(400, "bad_request", "the Content-Length header is malformed")
    (value,) = values
    # Only the magnitude matters: a 40-digit length is simply over any cap (and not worth converting).
    return int(value) if len(value) <= 18 else 10**18


class RequestLimitsMiddleware:
    """Refuses oversized heads and bodies in the JSON envelope, before routing and authentication."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_header_count: int = MAX_HEADER_COUNT,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_url_bytes: int = MAX_URL_BYTES,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes
        self.max_url_bytes = max_url_bytes

    def _check_head(self, scope: Scope) -> None:
        headers = scope.get("headers") or []
        if len(headers) > self.max_header_count:
            raise ApiError(431, "headers_too_large", f"more than {self.max_header_count} request headers")
        if sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            raise ApiError(
                431, "headers_too_large", f"the request headers exceed {self.max_header_bytes} bytes"
            )
        path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        if len(path) + len(scope.get("query_string") or b"") > self.max_url_bytes:
            raise ApiError(414, "uri_too_long", f"the URL exceeds {self.max_url_bytes} bytes")
        declared = _declared_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            raise body_too_large(self.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_head(scope)
        except ApiError as exc:
            await failure(exc.status, exc.code, exc.message, exc.headers)(scope, receive, send)
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            if received > self.max_body_bytes:
                raise body_too_large(self.max_body_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the route's body read, so the exception handlers turn it into the 413
                    # envelope; nothing further is pulled from the client.
                    raise body_too_large(self.max_body_bytes)
            return message

        await self.app(scope, capped_receive, send)
