"""The Oura OAuth application: authorize URL, code exchange, refresh and revoke.

authlib speaks the token endpoint; this module pins what Oura expects (client credentials in the form body,
the authorize URL's exact shape) and turns every failure into an error whose message is safe to log: no
access or refresh token, authorization code or client secret ever reaches a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from oura_assets.config import OAUTH_SCOPES, Settings
from oura_assets.oura.client import OuraError
from oura_assets.redaction import install_log_redaction
from oura_assets.tls import tls_context

log = logging.getLogger(__name__)

# When a token response has no `expires_in` we assume a day. Oura has been seen answering about 30 days
# (OURA-NOTES "OAuth"); assuming less only means refreshing earlier, which the single-use rotation in
# tokens.py makes safe, while assuming more would mean a 401 and a forced refresh mid-sync.
DEFAULT_EXPIRES_IN = timedelta(hours=24)

_OAUTH_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")
_REDACTED = "[redacted]"


class TokenEndpointError(OuraError):
    """Oura's token (or revoke) endpoint failed. `error` is the OAuth error code when Oura sent one."""

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message, status=status)
        self.error = error


class RefreshRejected(TokenEndpointError):
    """Oura answered `invalid_grant` to a refresh: the refresh token is spent or revoked; reconnect needed."""


@dataclass(frozen=True, repr=False)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    scopes: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={_REDACTED}, refresh_token={_REDACTED}, "
            f"expires_at={self.expires_at.isoformat()}, scopes={self.scopes!r})"
        )

    __str__ = __repr__

    def expires_within(self, delta: timedelta, *, now: datetime | None = None) -> bool:
        return self.expires_at - (now or datetime.now(UTC)) <= delta


class _Redactor:
    """Removes the given secrets from text taken from Oura or from a library's exception."""

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = [s for s in secrets if s]

    def __call__(self, text: object) -> str:
        cleaned = str(text)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, _REDACTED)
        return cleaned[:200]


def _parse_token_response(
    raw: Mapping[str, Any], *, fallback_refresh: str | None, fallback_scopes: Sequence[str]
) -> TokenSet:
    access = raw.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenEndpointError("Oura's token response has no access_token")
    refresh = raw.get("refresh_token") or fallback_refresh
    if not isinstance(refresh, str) or not refresh:
        # Without a refresh token the connection would die silently when the access token expires.
        raise TokenEndpointError("Oura's token response has no refresh_token")
    expires_in: timedelta = DEFAULT_EXPIRES_IN
    raw_expires = raw.get("expires_in")
    if raw_expires is not None:
        try:
            expires_in = timedelta(seconds=float(raw_expires))
        except (TypeError, ValueError):
            log.warning("Oura's token response has an unreadable expires_in; assuming %s", DEFAULT_EXPIRES_IN)
    # Oura may leave `scope` out of the answer; RFC 6749 §5.1 says it is then the scope requested.
    raw_scope = raw.get("scope")
    if isinstance(raw_scope, str) and raw_scope.strip():
        scopes = tuple(raw_scope.split())
    elif isinstance(raw_scope, list) and raw_scope:
        scopes = tuple(str(s) for s in raw_scope)
    else:
        scopes = tuple(fallback_scopes)
    return TokenSet(
        access_token=access,
        refresh_token=refresh,
        expires_at=datetime.now(UTC) + expires_in,
        scopes=scopes,
    )


class OuraOAuthApp:
    """The registered Oura application. Safe to share; every call opens its own short-lived HTTP client.

    `transport` exists for tests (httpx.MockTransport); `scopes` defaults to `config.OAUTH_SCOPES`.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        authorize_url: str,
        token_url: str,
        revoke_url: str,
        timeout_s: float = 30,
        *,
        scopes: Sequence[str] = OAUTH_SCOPES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.authorize_url = authorize_url
        self.token_url = token_url
        self.revoke_url = revoke_url
        self.scopes = tuple(scopes)
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._transport = transport

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> OuraOAuthApp:
        client_id, client_secret, redirect_uri = settings.oauth_client()
        return cls(
            client_id,
            client_secret,
            redirect_uri,
            settings.authorize_url,
            settings.token_url,
            settings.revoke_url,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"OuraOAuthApp(client_id={self.client_id!r}, token_url={self.token_url!r})"

    def authorization_url(self, state: str) -> str:
        """Where to send the patient's browser. Built by hand: the parameter order is pinned by CONTRACT §3
        and authlib orders them differently. urlencode joins the space-separated scopes with `+`."""
        query = urlencode(
            [
                ("client_id", self.client_id),
                ("redirect_uri", self.redirect_uri),
                ("scope", " ".join(self.scopes)),
                ("response_type", "code"),
                ("state", state),
            ]
        )
        separator = "&" if "?" in self.authorize_url else "?"
        return f"{self.authorize_url}{separator}{query}"

    def exchange_code(self, code: str) -> TokenSet:
        """Trade an authorization code (single use, 10 minutes [spec]) for the first token pair."""
        raw = self._token_request("code exchange", _Redactor(code, self._client_secret), code=code)
        return _parse_token_response(raw, fallback_refresh=None, fallback_scopes=self.scopes)

    def refresh(self, refresh_token: str, *, fallback_scopes: Sequence[str] | None = None) -> TokenSet:
        """Spend `refresh_token` for a new pair. Oura's refresh tokens are single use: store the answer.

        `fallback_scopes` (e.g. the stored grant) is used when Oura's answer leaves `scope` out.
        """
        raw = self._token_request(
            "refresh", _Redactor(refresh_token, self._client_secret), refresh_token=refresh_token
        )
        scopes = self.scopes if fallback_scopes is None else tuple(fallback_scopes)
        # RFC 6749 §6: a refresh answer without a refresh token means the old one stays valid.
        return _parse_token_response(raw, fallback_refresh=refresh_token, fallback_scopes=scopes)

    def revoke(self, access_token: str) -> None:
        """`POST {revoke_url}?access_token=…`, what Oura's client libraries use (not in the spec)."""
        redact = _Redactor(access_token, self._client_secret)
        install_log_redaction()  # httpx logs the revoke URL, token and all
        try:
            with self._session() as session:
                response = session.request(
                    "POST", self.revoke_url, params={"access_token": access_token}, withhold_token=True
                )
        except httpx.HTTPError as exc:
            raise TokenEndpointError(
                f"could not reach Oura's revoke endpoint ({type(exc).__name__})"
            ) from None
        if not response.is_success:
            detail = _oauth_error_code(response)
            suffix = f" ({redact(detail)})" if detail else ""
            raise TokenEndpointError(
                f"Oura's revoke endpoint answered {response.status_code}{suffix}",
                status=response.status_code,
                error=detail,
            )

    def _session(self) -> OAuth2Client:
        # client_secret_post: client_id and client_secret in the form body, Oura's documented way [spec].
        return OAuth2Client(
            client_id=self.client_id,
            client_secret=self._client_secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name, not a secret
            redirect_uri=self.redirect_uri,
            timeout=self._timeout,
            transport=self._transport,
            verify=tls_context(),
        )

    def _token_request(self, what: str, redact: _Redactor, **grant: str) -> dict[str, Any]:
        seen: dict[str, int] = {}

        def remember_status(response: httpx.Response) -> httpx.Response:
            seen["status"] = response.status_code
            return response

        try:
            with self._session() as session:
                session.register_compliance_hook("access_token_response", remember_status)
                session.register_compliance_hook("refresh_token_response", remember_status)
                if "code" in grant:
                    token = session.fetch_token(
                        self.token_url, grant_type="authorization_code", code=grant["code"]
                    )
                else:
                    token = session.refresh_token(self.token_url, refresh_token=grant["refresh_token"])
        except OAuthError as exc:
            # authlib's message carries Oura's error_description verbatim: keep the code, redact the text.
            code = exc.error if isinstance(exc.error, str) and _OAUTH_ERROR_CODE.match(exc.error) else None
            status = seen.get("status")
            description = f": {redact(exc.description)}" if exc.description else ""
            message = f"Oura refused the {what} ({code or 'unrecognised error'}, HTTP {status}){description}"
            if code == "invalid_grant" and what == "refresh":
                raise RefreshRejected(message, status=status, error=code) from None
            raise TokenEndpointError(message, status=status, error=code) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            raise TokenEndpointError(
                f"Oura's token endpoint answered {status} to the {what}", status=status
            ) from None
        except httpx.HTTPError as exc:
            raise TokenEndpointError(
                f"could not reach Oura's token endpoint for the {what} ({type(exc).__name__})"
            ) from None
        except ValueError:
            raise TokenEndpointError(
                f"Oura's token endpoint answered the {what} with something other than a token object",
                status=seen.get("status"),
            ) from None
        status = seen.get("status")
        if status is not None and status >= 400:
            raise TokenEndpointError(
                f"Oura's token endpoint answered {status} to the {what} without an OAuth error", status=status
            )
        return dict(token)


def _oauth_error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) and _OAUTH_ERROR_CODE.match(error) else None
