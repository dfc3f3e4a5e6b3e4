"""Assembles the simulator's ASGI app: Oura's OAuth and data routes plus the simulator-only `/_sim` controls.

The `/_sim` routes are not Oura's; they let the demo, `make dev` and tests from other processes do over HTTP
what `SimulatorControl` does in-process: faults, the data clock, stats, and tokens without a browser.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oura_assets.simulator.api import PageTokens, UserCollectionApi
from oura_assets.simulator.config import SimulatorConfig
from oura_assets.simulator.control import SimulatorControl
from oura_assets.simulator.faults import FaultInjection
from oura_assets.simulator.grant_store import KNOWN_SCOPES
from oura_assets.simulator.oauth import OAuthServer
from oura_assets.simulator.problems import Problem, ValidationProblem, handle_problem, handle_validation
from oura_assets.simulator.state import SimulatorState
from oura_assets.simulator.webhooks import WebhookHub


class _ControlRoutes:
    """`/_sim/*`: the `SimulatorControl` methods over HTTP."""

    def __init__(self, control: SimulatorControl) -> None:
        self.control = control

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            value = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise Problem(400, f"The body is not JSON: {exc.msg}.") from None
        if not isinstance(value, dict):
            raise Problem(400, "The body must be a JSON object.")
        return value

    async def faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            return JSONResponse(self.control.reset())
        if request.method == "GET":
            return JSONResponse(self.control.faults())
        try:
            return JSONResponse(self.control.set_faults(**await self._json(request)))
        except (ValueError, TypeError, KeyError) as exc:
            raise Problem(400, str(exc)) from None

    async def clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._json(request)
            raw = body.get("now")
            try:
                now = datetime.fromisoformat(raw) if raw else None
                self.control.set_clock(now, frozen=bool(body.get("frozen", False)))
            except (ValueError, TypeError) as exc:
                raise Problem(400, f"now must be an ISO 8601 date-time with an offset: {exc}") from None
        return JSONResponse({"now": self.control.now().isoformat()})

    async def stats(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.control.reset_stats()
        return JSONResponse(self.control.stats())

    async def tokens(self, request: Request) -> Response:
        body = await self._json(request)
        user = body.get("user")
        scopes = body.get("scopes", list(KNOWN_SCOPES))
        if not isinstance(user, str) or not user or not isinstance(scopes, list):
            raise Problem(400, "user (a non-empty string) is required; scopes must be a list")
        return JSONResponse(self.control.issue_tokens(user, tuple(scopes), body.get("client_id")))

    def routes(self) -> list[Route]:
        return [
            Route("/_sim/faults", self.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/clock", self.clock, methods=["GET", "POST"]),
            Route("/_sim/stats", self.stats, methods=["GET", "DELETE"]),
            Route("/_sim/tokens", self.tokens, methods=["POST"]),
        ]


def create_app(config: SimulatorConfig) -> Starlette:
    """The simulator as a Starlette app; `app.state.control` is its in-process `SimulatorControl`."""
    state = SimulatorState(config)
    control = SimulatorControl(state)
    api = UserCollectionApi(state, PageTokens())
    oauth = OAuthServer(state.grants, config.clients)
    webhooks = WebhookHub(state)
    app = Starlette(
        routes=[*oauth.routes(), *api.routes(), *webhooks.routes(), *_ControlRoutes(control).routes()],
        middleware=[Middleware(FaultInjection, faults=state.faults, stats=state.request_stats)],
        exception_handlers={Problem: handle_problem, ValidationProblem: handle_validation},
    )
    app.state.control = control
    app.state.webhooks = webhooks
    return app
