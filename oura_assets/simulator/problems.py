"""Error answers shaped like Oura's: RFC 7807 `{status, title, detail}` and FastAPI's 422 `{detail: [...]}`.

Raised anywhere in a handler as `Problem` and rendered by one exception handler, so every route fails the same
way and the schema test can check a single shape.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class Problem(Exception):
    """An HTTP error answer; `headers` ride along (Retry-After, X-RateLimit-*, WWW-Authenticate)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class ValidationProblem(Exception):
    """A malformed query parameter: FastAPI's 422 body, `loc` naming the parameter."""

    def __init__(self, param: str, message: str, error_type: str, value: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.error_type = error_type
        self.value = value


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"status": status, "title": HTTPStatus(status).phrase, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, exc.headers)


async def handle_validation(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationProblem)
    item: dict[str, object] = {"loc": ["query", exc.param], "msg": exc.message, "type": exc.error_type}
    if exc.value is not None:
        item["input"] = exc.value
    return JSONResponse({"detail": [item]}, status_code=422)
