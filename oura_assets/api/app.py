"""The Starlette application: routes of CONTRACT §3, the auth check in front of them, and wiring.

Nothing is read from the environment at import: `create_app()` only builds the routing table, and the
lifespan loads settings and opens the warehouse when the server starts (so `import oura_assets.api` is free,
and a missing variable stops start-up with one clear line). Tests inject their own settings, warehouse,
OAuth app and JWT verifier. Route handlers are async but every DuckDB or HTTP call runs in a worker thread,
so a request waiting for the warehouse lock never blocks the event loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from oura_assets import coordination
from oura_assets import warehouse as wh
from oura_assets.api.audit import AuditMiddleware, trail_of, wants_erasure
from oura_assets.api.auth import AuthUnavailable, JwtVerifier, Unauthorized, verifier_from_settings
from oura_assets.api.first_data import FirstDataLane
from oura_assets.api.limits import RequestLimitsMiddleware
from oura_assets.api.responses import (
    ApiError,
    CatchAllMiddleware,
    api_error_handler,
    failure,
    http_error_handler,
    ok,
    retry_after,
)
from oura_assets.api.service import SOURCE, ConnectionService, invalid_request
from oura_assets.api.webhooks import webhook_routes
from oura_assets.config import Settings, load_settings
from oura_assets.oura.client import OuraClient
from oura_assets.oura.oauth import OuraOAuthApp
from oura_assets.redaction import install_log_redaction
from oura_assets.tokens import PatientTokens, TokenCipher

log = logging.getLogger("oura_assets.api")

PREFIX = "/api/patient-graph/wearables"
REQUIRED_SETTINGS = ("oauth", "tokens", "jwt")
# How long a request waits for the warehouse writer lock before answering 503: long enough to ride out a
# sensor tick or one patient's write, short enough that a browser or client is not left hanging.
API_LOCK_WAIT_S = 10.0


class SyncBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: Literal["oura"]
    # The contract's JSON names, camelCase.
    startDate: date | None = None
    endDate: date | None = None


def _service(request: Request) -> ConnectionService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "starting", "the service is starting; try again shortly", {"Retry-After": "1"})
    return service


async def _patient(request: Request) -> str:
    """The caller's patient id from a verified Bearer JWT, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "an Authorization: Bearer token is required", {"WWW-Authenticate": "Bearer"}
        )
    verifier: JwtVerifier | None = getattr(request.app.state, "verifier", None)
    if verifier is None:
        raise ApiError(503, "starting", "the service is starting; try again shortly", {"Retry-After": "1"})
    try:
        # Verification may fetch the JWKS over HTTP: keep it off the event loop.
        patient_id = await run_in_threadpool(verifier.verify, token.strip())
    except Unauthorized as exc:
        raise ApiError(
            401, "unauthorized", str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    except AuthUnavailable as exc:
        raise ApiError(503, "auth_unavailable", str(exc), {"Retry-After": "30"}) from None
    trail = trail_of(request)
    if trail is not None:
        trail.identify(patient_id)
    return patient_id


def _check_source(source: str) -> None:
    if source != SOURCE:
        raise invalid_request(f'unknown source; the only source is "{SOURCE}"')


async def connect(request: Request) -> Response:
    _check_source(request.path_params["source"])
    patient_id = await _patient(request)
    service = _service(request)
    return ok(await run_in_threadpool(service.start_connect, patient_id, trail_of(request)))


async def callback(request: Request) -> Response:
    params = request.query_params
    data = await run_in_threadpool(
        _service(request).complete_callback,
        params.get("code"),
        params.get("state"),
        params.get("error"),
        trail_of(request),
    )
    return ok(data)


def _body_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "literal_error" and field == "source":
            problems.append(f'unknown source; the only source is "{SOURCE}"')
        elif error["type"] == "json_invalid":
            problems.append("the body is not valid JSON")
        elif error["type"] == "extra_forbidden":
            # The name is not echoed: whatever a caller puts in a body must not come back in an answer.
            problems.append(f"unexpected field; the body takes {', '.join(SyncBody.model_fields)}")
        elif field:
            problems.append(f"{field}: {error['msg']}")
        else:
            problems.append(error["msg"])
    return "; ".join(dict.fromkeys(problems))


async def sync(request: Request) -> Response:
    patient_id = await _patient(request)
    # RequestLimitsMiddleware caps what this read can pull (413 past MAX_BODY_BYTES).
    body = await request.body()
    if not body.strip():
        raise invalid_request('a JSON body like {"source": "oura"} is required')
    try:
        parsed = SyncBody.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(_body_error(exc)) from None
    data = await run_in_threadpool(
        _service(request).request_sync, patient_id, parsed.startDate, parsed.endDate, trail_of(request)
    )
    return ok(data, status=202)


async def sync_status(request: Request) -> Response:
    patient_id = await _patient(request)
    sync_id = request.path_params["sync_id"]
    return ok(await run_in_threadpool(_service(request).sync_status, patient_id, sync_id, trail_of(request)))


async def connections(request: Request) -> Response:
    patient_id = await _patient(request)
    return ok(await run_in_threadpool(_service(request).connections, patient_id, trail_of(request)))


async def disconnect(request: Request) -> Response:
    _check_source(request.path_params["source"])
    patient_id = await _patient(request)
    erase = wants_erasure(request.query_params)
    if erase is None:
        raise invalid_request("erase must be true or false")
    service = _service(request)
    if erase:
        # Erasure (the patient's data removed from every table) is idempotent: nothing left is success.
        return ok(await run_in_threadpool(service.erase, patient_id, trail_of(request)))
    return ok(await run_in_threadpool(service.disconnect, patient_id, trail_of(request)))


async def healthz(request: Request) -> Response:
    if getattr(request.app.state, "service", None) is None:
        return failure(503, "starting", "the service is starting", {"Retry-After": "1"})
    return ok({"status": "ok"})


async def warehouse_busy_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, wh.WarehouseBusy)
    # The holder (pid, purpose) is for operators: it goes to the log, not to the caller.
    log.warning("warehouse busy answering %s %s: %s", request.method, request.url.path, exc)
    seconds = retry_after(getattr(exc, "retry_after_s", None))
    return failure(
        503, "warehouse_busy", f"the warehouse is busy; retry in {seconds} s", {"Retry-After": seconds}
    )


def create_app(
    settings: Settings | None = None,
    *,
    warehouse: wh.Warehouse | None = None,
    oauth_app: OuraOAuthApp | None = None,
    jwt_verifier: JwtVerifier | None = None,
    lock_wait_s: float = API_LOCK_WAIT_S,
    first_data_inline: bool = False,
) -> Starlette:
    """The connection API. Anything not injected is built from the settings when the app starts.

    `first_data_inline`: execute new connections' first-data runs in this process (api/first_data.py).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install_log_redaction()
        resolved = settings or load_settings(require=REQUIRED_SETTINGS)
        store = warehouse or wh.Warehouse.from_settings(resolved, lock_timeout_s=lock_wait_s)
        try:
            await run_in_threadpool(store.ensure_schema)
        except wh.WarehouseBusy as exc:
            # Someone else holds the lock and created the schema before us; requests wait their turn.
            log.warning("schema check skipped at start-up: %s", exc)
        app.state.verifier = jwt_verifier or verifier_from_settings(resolved)
        cipher = TokenCipher(resolved.token_keys)
        oauth = oauth_app or OuraOAuthApp.from_settings(resolved)
        shared = coordination.from_settings(resolved)  # refresh locks and token journal

        def client_for(patient_id: str) -> OuraClient:
            tokens = PatientTokens(
                patient_id=patient_id,
                warehouse=store,
                cipher=cipher,
                oauth_app=oauth,
                lock_dir=resolved.lock_dir,
                coordination=shared,
            )
            return OuraClient(resolved.api_base_url, tokens)

        lane = FirstDataLane(store, client_for) if first_data_inline else None
        if lane is not None:
            lane.warm_up()
        app.state.service = ConnectionService(
            settings=resolved,
            warehouse=store,
            oauth=oauth,
            cipher=cipher,
            first_data_lane=lane,
        )
        # Grants of callbacks that died with a previous API process (see ConnectionService.recover_grants).
        await run_in_threadpool(app.state.service.recover_grants_quietly)
        log.info("connection API ready (warehouse %s, demo=%s)", resolved.warehouse_path, resolved.demo)
        yield
        app.state.service = None
        app.state.verifier = None
        if lane is not None:
            await run_in_threadpool(lane.close)

    routes = [
        Route(f"{PREFIX}/connect/{{source}}", connect, methods=["POST"]),
        Route(f"{PREFIX}/callback/oura", callback, methods=["GET"]),
        Route(f"{PREFIX}/sync", sync, methods=["POST"]),
        Route(f"{PREFIX}/sync/{{sync_id}}", sync_status, methods=["GET"]),
        Route(f"{PREFIX}/connections", connections, methods=["GET"]),
        Route(f"{PREFIX}/connections/{{source}}", disconnect, methods=["DELETE"]),
        *webhook_routes(PREFIX),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        # Outermost first: every audited request gets its entry, even one the others refuse or fail.
        middleware=[
            Middleware(AuditMiddleware),
            Middleware(CatchAllMiddleware),
            Middleware(RequestLimitsMiddleware),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            wh.WarehouseBusy: warehouse_busy_handler,
        },
        lifespan=lifespan,
    )
    # Starlette would answer `/sync/` with a 307 to `/sync` on whatever host the `Host` header names: an open
    # redirect, and outside the envelope. A path with a stray slash is simply not a route here (404).
    app.router.redirect_slashes = False
    app.state.service = None
    app.state.verifier = None
    return app
