"""Oura's OAuth server, simulated: the authorize page, the token endpoint and revocation.

Behaviour a client has to get right, as at Oura (and RFC 6749 where Oura says nothing):
- authorize validates `client_id` and an exact `redirect_uri` match before anything else and then never
  redirects on those errors; other errors (`response_type`, unknown scope, a denial) go back to the
  redirect URI as `error=...` with the `state`. Scopes may be separated by spaces or `+`.
- `sim_user=<name>` consents at once as that user (no browser needed); `sim_deny=1` denies; otherwise a small
  HTML consent page with a username box posts back here.
- token: form body only; client credentials in the body or HTTP Basic; codes are single-use, live 10
  minutes and are bound to the client and redirect URI (a replayed code also revokes what it granted);
  refresh tokens rotate and a spent one answers 400 `invalid_grant`.
- revoke: `?access_token=` (query or form; `token=` also accepted) kills the whole grant; unknown tokens
  answer 200 as RFC 7009 asks.

Forms are parsed with the standard library because Starlette's `request.form()` needs python-multipart, which
the project does not depend on.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from oura_assets.simulator.config import ClientRegistration
from oura_assets.simulator.grant_store import KNOWN_SCOPES, GrantStore, OAuthError


class _BadForm(Exception):
    pass


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if body and content_type != "application/x-www-form-urlencoded":
        raise _BadForm("the body must be application/x-www-form-urlencoded")
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise _BadForm(f"parameter {key!r} is repeated")
        form[key] = value
    return form


def _oauth_error(
    error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _with_query(uri: str, params: dict[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>body{font-family:sans-serif;max-width:30em;margin:3em auto}</style></head><body>"
        + body
        + "</body></html>",
        status_code=status,
    )


@dataclass(frozen=True)
class AuthorizeRequest:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None

    def redirect(self, **params: str) -> RedirectResponse:
        if self.state is not None:
            params["state"] = self.state
        return RedirectResponse(_with_query(self.redirect_uri, params), status_code=302)


@dataclass
class OAuthServer:
    grants: GrantStore
    clients: Mapping[str, ClientRegistration]

    def _validate(self, params: dict[str, str]) -> AuthorizeRequest | Response:
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        client = self.clients.get(client_id)
        if client is None:
            return _page("Invalid request", "<h1>Unknown client_id</h1>", 400)
        if redirect_uri not in client.redirect_uris:
            # Never redirect to an unregistered URI (RFC 6749 §4.1.2.1).
            return _page("Invalid request", "<h1>redirect_uri does not match the registered one</h1>", 400)
        state = params.get("state")
        raw_scope = params.get("scope")
        scopes = tuple(dict.fromkeys(raw_scope.replace("+", " ").split())) if raw_scope else KNOWN_SCOPES
        request = AuthorizeRequest(client_id, redirect_uri, scopes, state)
        if params.get("response_type") != "code":
            return request.redirect(error="unsupported_response_type")
        unknown = [scope for scope in scopes if scope not in KNOWN_SCOPES]
        if unknown or not scopes:
            return request.redirect(
                error="invalid_scope", error_description=f"unknown scope {' '.join(unknown)}"
            )
        return request

    def _consent(self, request: AuthorizeRequest, user: str) -> Response:
        code = self.grants.issue_code(request.client_id, request.redirect_uri, user, request.scopes)
        return request.redirect(code=code)

    async def authorize(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                params = await _form(request)
            except _BadForm as exc:
                return _page("Invalid request", f"<h1>{html.escape(str(exc))}</h1>", 400)
        else:
            params = dict(request.query_params)
        validated = self._validate(params)
        if isinstance(validated, Response):
            return validated
        if params.get("sim_deny") in ("1", "true") or params.get("decision") == "deny":
            return validated.redirect(error="access_denied")
        user = (params.get("sim_user") or params.get("username") or "").strip()
        if user and (request.method == "GET" or params.get("decision") == "allow"):
            if len(user) > 128:
                return _page("Invalid request", "<h1>That username is too long</h1>", 400)
            return self._consent(validated, user)
        return self._consent_page(validated, params, missing_user=request.method == "POST")

    def _consent_page(
        self, request: AuthorizeRequest, params: dict[str, str], missing_user: bool
    ) -> Response:
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(key)}' value='{html.escape(params[key])}'>"
            for key in ("client_id", "redirect_uri", "response_type", "scope", "state")
            if key in params
        )
        warning = "<p style='color:#b00'>Enter a username to allow access.</p>" if missing_user else ""
        scopes = "".join(f"<li>{html.escape(scope)}</li>" for scope in request.scopes)
        body = (
            "<h1>Oura (simulated)</h1>"
            f"<p><b>{html.escape(request.client_id)}</b> asks to read:</p><ul>{scopes}</ul>{warning}"
            f"<form method='post' action='/oauth/authorize'>{hidden}"
            "<label>Oura username <input name='username' autofocus></label> "
            "<button name='decision' value='allow'>Allow</button> "
            "<button name='decision' value='deny'>Deny</button></form>"
        )
        return _page("Authorize access", body, 400 if missing_user else 200)

    def _client(self, request: Request, form: dict[str, str]) -> str:
        """The authenticated client id, from HTTP Basic or the form body."""
        header = request.headers.get("authorization", "")
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
                basic_id, _, basic_secret = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            basic_id, basic_secret = unquote(basic_id), unquote(basic_secret)
            if (client_id and client_id != basic_id) or (secret and secret != basic_secret):
                raise OAuthError("invalid_client", "Basic credentials and the body disagree", 401)
            client_id, secret = basic_id, basic_secret
        registration = self.clients.get(client_id or "")
        if registration is None or secret is None or secret != registration.secret:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        assert client_id is not None
        return client_id

    async def token(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except _BadForm as exc:
            return _oauth_error("invalid_request", str(exc))
        try:
            client_id = self._client(request, form)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                if not form.get("code"):
                    raise OAuthError("invalid_request", "code is required")
                answer = self.grants.exchange_code(client_id, form["code"], form.get("redirect_uri"))
            elif grant_type == "refresh_token":
                if not form.get("refresh_token"):
                    raise OAuthError("invalid_request", "refresh_token is required")
                answer = self.grants.refresh(client_id, form["refresh_token"])
            elif not grant_type:
                raise OAuthError("invalid_request", "grant_type is required")
            else:
                raise OAuthError("unsupported_grant_type", "only authorization_code and refresh_token")
        except OAuthError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="oura"'} if exc.status == 401 else None
            return _oauth_error(exc.error, exc.description, exc.status, headers)
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def revoke(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            try:
                params.update(await _form(request))
            except _BadForm as exc:
                return _oauth_error("invalid_request", str(exc))
        token = params.get("access_token") or params.get("token")
        if not token:
            return _oauth_error("invalid_request", "access_token is required")
        self.grants.revoke(token)
        return JSONResponse({})

    def routes(self) -> list[Route]:
        return [
            Route("/oauth/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/oauth/revoke", self.revoke, methods=["GET", "POST"]),
        ]
