"""The audit trail of the connection API: one `patient_graph.audit_log` row per call of a patient route.

`AuditMiddleware` (outermost) gives every request a request id (the caller's `X-Request-Id` when it is
well-formed, else a fresh one), echoes it in the answer, and hangs an `AuditTrail` on the request. Routes
fill in who is calling once the JWT (or the OAuth state) says so, and the service appends the entry with
`AuditTrail.record` inside the transaction of the action itself, as its last write: the action and its
record commit together. Whatever did not get that far — a 401, a 409, a 422, a body refused by the request
limits, a 500, a busy warehouse — is recorded by the middleware in a transaction of its own, with the error
code the caller got, before the answer leaves. The entry holds who, what, whose, the outcome code, the
client address and the request id; no token, code, state, JWT or body ever reaches it.

Limits: the client address is the peer the server saw (a reverse proxy's, behind one); and a request whose
answer could not be written to the warehouse at all (busy past the wait, disk full) is logged instead.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass

import duckdb
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oura_assets import warehouse as wh
from oura_assets.clock import utc_now

log = logging.getLogger("oura_assets.api")

PREFIX = "/api/patient-graph/wearables"
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SCOPE_KEY = "oura_assets.audit"
# How long the fallback entry waits for the warehouse when the answer was already "busy": the caller has
# waited out the API's own lock wait once and is waiting for the answer meanwhile. Otherwise it waits as long
# as any request does (the warehouse's lock timeout, `API_LOCK_WAIT_S` in production).
BUSY_AUDIT_WAIT_S = 1.0

# (method, path pattern) -> action; the DELETE's action depends on `?erase`.
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(rf"{PREFIX}/connect/[^/]+"), "connect"),
    ("GET", re.compile(rf"{PREFIX}/callback/oura"), "callback"),
    ("POST", re.compile(rf"{PREFIX}/sync"), "sync_request"),
    ("GET", re.compile(rf"{PREFIX}/sync/[^/]+"), "sync_status"),
    ("GET", re.compile(rf"{PREFIX}/connections"), "connections"),
    ("DELETE", re.compile(rf"{PREFIX}/connections/[^/]+"), "disconnect"),
)
ERASE_VALUES = {"true": True, "1": True, "false": False, "0": False}


def wants_erasure(query: QueryParams) -> bool | None:
    """`?erase=true` (or 1): True; absent, false or 0: False; anything else: None (a malformed request)."""
    raw = query.get("erase")
    return False if raw is None else ERASE_VALUES.get(raw.lower())


def action_for(method: str, path: str, query: QueryParams) -> str | None:
    """The audited action a request is, or None (health check, unknown route, wrong method)."""
    for route_method, pattern, action in _ROUTES:
        if method == route_method and pattern.fullmatch(path):
            if action == "disconnect" and "erase" in query and wants_erasure(query) is not False:
                return "erase"
            return action
    return None


def request_id_from(headers: Headers) -> str:
    supplied = headers.get(REQUEST_ID_HEADER, "")
    return supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


@dataclass
class AuditTrail:
    """One request's audit entry in the making."""

    action: str | None
    request_id: str
    client_address: str | None
    actor: str | None = None
    patient_id: str | None = None
    recorded: bool = False

    def identify(self, patient_id: str) -> None:
        """The caller is `patient_id` (a verified JWT's `sub`, or the patient an OAuth state was bound to)."""
        self.actor = self.patient_id = patient_id

    def entry(self, outcome: str, status_code: int | None) -> wh.AuditEntry:
        return wh.AuditEntry(
            occurred_at=utc_now(),
            actor=self.actor or wh.ANONYMOUS,
            action=self.action or "unknown",
            patient_id=self.patient_id,
            outcome=outcome,
            request_id=self.request_id,
            status_code=status_code,
            client_address=self.client_address,
        )

    def record(self, conn: duckdb.DuckDBPyConnection, status_code: int = 200) -> None:
        """Append the successful action's entry on `conn`: call it as the action's last write."""
        wh.record_audit(conn, self.entry("ok", status_code))
        self.recorded = True


def trail_of(request: Request) -> AuditTrail | None:
    trail = request.scope.get(_SCOPE_KEY)
    return trail if isinstance(trail, AuditTrail) and trail.action else None


def _error_code(status: int, body: bytes) -> str:
    if status < 400:
        return "ok"
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    # Our own codes are short snake_case words; anything else is not echoed into the log.
    return code if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else f"http_{status}"


class AuditMiddleware:
    """Request ids on every answer, and the fallback audit entry of audited requests (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        trail = AuditTrail(
            action=action_for(scope["method"], scope["path"], QueryParams(scope.get("query_string", b""))),
            request_id=request_id_from(Headers(scope=scope)),
            client_address=client[0] if client else None,
        )
        scope[_SCOPE_KEY] = trail
        held: Message | None = None
        body = bytearray()

        async def audited_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", trail.request_id.encode()))
                message = {**message, "headers": headers}
                if trail.action is None:
                    await send(message)
                else:
                    held = message  # sent once the entry is written: a caller never sees an unaudited answer
                return
            if message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return  # every answer here is one small JSON document; gather it whole
                await self._fallback(scope, trail, held["status"], bytes(body))
                await send(held)
                held = None
                await send({"type": "http.response.body", "body": bytes(body), "more_body": False})
                return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if trail.action is not None and held is None and not trail.recorded:
                await self._fallback(scope, trail, 500, b"")
            raise

    async def _fallback(self, scope: Scope, trail: AuditTrail, status: int, body: bytes) -> None:
        # A success was recorded in its own transaction as that transaction's last write, and nothing a
        # route does after its commit can fail, so an error answer always means no entry was committed.
        if trail.recorded and status < 400:
            return
        service = getattr(scope["app"].state, "service", None) if "app" in scope else None
        if service is None:
            log.warning(
                "request %s (%s) not audited: the service is not started", trail.request_id, trail.action
            )
            return
        entry = trail.entry(_error_code(status, body), status)
        wait = service.warehouse.lock_timeout_s
        if entry.outcome == "warehouse_busy":
            wait = min(wait, BUSY_AUDIT_WAIT_S)

        def write() -> None:
            for attempt in service.warehouse.attempts("api: audit entry", wait):
                with attempt as conn:
                    wh.record_audit(conn, entry)

        try:
            await run_in_threadpool(write)
            trail.recorded = True
        except Exception as exc:
            log.error(
                "request %s (%s, outcome %s) could not be audited (%s)",
                trail.request_id,
                trail.action,
                entry.outcome,
                type(exc).__name__,
            )
