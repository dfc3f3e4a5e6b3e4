"""Oura webhooks from our side: the event signature, and a small client for the subscription routes.

Oura signs each event it POSTs to a subscription's callback: `x-oura-signature` is the uppercase hex
HMAC-SHA256, keyed with the application's client secret, of `x-oura-timestamp` followed by the raw body
(OURA-NOTES.md, "Webhooks"). The simulator signs with `sign_event` and the connection API checks with
`signature_valid`, so both sides share one definition of the scheme.

Subscriptions (`/v2/webhook/subscription`, spec "Webhook Subscription Routes") are the application's, not a
patient's: they authenticate with `x-client-id` / `x-client-secret` headers, one subscription per
(event_type, data_type), and they expire (`expiration_time`) unless renewed. `ensure_subscriptions` makes the
set we need exist and renews those close to expiry; the daily schedule in `defs/webhooks.py` and
`oura-assets webhooks ensure` both call it. No message here ever carries the client secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx

from oura_assets.clock import as_utc, utc_now
from oura_assets.config import ConfigError, Settings
from oura_assets.domain import DOCUMENT_COLLECTIONS
from oura_assets.tls import tls_context

SUBSCRIPTION_PATH = "/v2/webhook/subscription"
EVENT_TYPES = ("create", "update", "delete")
"""Oura's `WebhookOperation`."""
WEBHOOK_DATA_TYPES = DOCUMENT_COLLECTIONS
"""The data types we subscribe to: the document collections we ingest (Oura has no heart-rate webhooks)."""
DEFAULT_RENEW_WITHIN = timedelta(days=7)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Oura's `x-oura-signature` for a body sent at `timestamp`: uppercase hex HMAC-SHA256."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("utf-8") + body, hashlib.sha256)
    return mac.hexdigest().upper()


def sign_event(secret: str, timestamp: str, body: bytes) -> dict[str, str]:
    """The headers Oura sends with an event body."""
    return {
        "content-type": "application/json",
        "x-oura-timestamp": timestamp,
        "x-oura-signature": signature(secret, timestamp, body),
    }


def signature_valid(secret: str, timestamp: str, body: bytes, given: str) -> bool:
    """Whether `given` is the signature of `body` at `timestamp`, compared in constant time."""
    expected = signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), given.strip().upper().encode("ascii", "replace"))


def timestamp_instant(raw: str) -> datetime | None:
    """`x-oura-timestamp` as an instant: Unix seconds (or milliseconds), or None if malformed."""
    value = raw.strip()
    if not value or len(value) > 20 or not value.replace(".", "", 1).isdigit():
        return None
    seconds = float(value)
    if seconds > 1e11:  # milliseconds: no webhook is dated after the year 5138
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


class WebhookApiError(RuntimeError):
    """Oura refused or failed a subscription call; `status` is its HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Subscription:
    """A `WebhookSubscriptionModel`."""

    id: str
    callback_url: str
    event_type: str
    data_type: str
    expiration_time: datetime

    @classmethod
    def from_json(cls, value: Any) -> Subscription:
        try:
            return cls(
                id=str(value["id"]),
                callback_url=str(value["callback_url"]),
                event_type=str(value["event_type"]),
                data_type=str(value["data_type"]),
                expiration_time=as_utc(datetime.fromisoformat(str(value["expiration_time"]))),
            )
        except (KeyError, TypeError, ValueError):
            raise WebhookApiError(
                "Oura answered a subscription that is not a WebhookSubscriptionModel"
            ) from None

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "callbackUrl": self.callback_url,
            "eventType": self.event_type,
            "dataType": self.data_type,
            "expirationTime": self.expiration_time.isoformat(),
        }


class WebhookClient:
    """Oura's webhook subscription routes, authenticated as the application."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._http = http or httpx.Client(timeout=timeout_s, verify=tls_context())
        self._owns_http = http is None
        self._base = base_url.rstrip("/")
        self._headers = {"x-client-id": client_id, "x-client-secret": client_secret}

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        try:
            answer = self._http.request(method, self._base + path, headers=self._headers, json=json)
        except httpx.HTTPError as exc:
            raise WebhookApiError(
                f"{method} {path}: Oura could not be reached ({type(exc).__name__})"
            ) from None
        if answer.status_code >= 400:
            # Oura's detail is about the request (a failed callback verification, an unknown id); it never
            # quotes our headers, but keep it short.
            raise WebhookApiError(
                f"{method} {path} answered {answer.status_code}: {answer.text[:300]}", answer.status_code
            )
        return answer

    def list(self) -> list[Subscription]:
        answer = self._call("GET", SUBSCRIPTION_PATH).json()
        if not isinstance(answer, list):
            raise WebhookApiError("Oura's subscription list is not a list")
        return [Subscription.from_json(item) for item in answer]

    def create(
        self, callback_url: str, verification_token: str, event_type: str, data_type: str
    ) -> Subscription:
        """Create a subscription; Oura first verifies the callback (it must echo the challenge)."""
        body = {
            "callback_url": callback_url,
            "verification_token": verification_token,
            "event_type": event_type,
            "data_type": data_type,
        }
        return Subscription.from_json(self._call("POST", SUBSCRIPTION_PATH, body).json())

    def update(self, subscription_id: str, verification_token: str, **changes: str) -> Subscription:
        body = {"verification_token": verification_token, **changes}
        return Subscription.from_json(
            self._call("PUT", f"{SUBSCRIPTION_PATH}/{subscription_id}", body).json()
        )

    def renew(self, subscription_id: str) -> Subscription:
        return Subscription.from_json(
            self._call("PUT", f"{SUBSCRIPTION_PATH}/renew/{subscription_id}").json()
        )

    def delete(self, subscription_id: str) -> None:
        self._call("DELETE", f"{SUBSCRIPTION_PATH}/{subscription_id}")

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class EnsureReport:
    """What `ensure_subscriptions` did, by (event_type, data_type) as `event_type/data_type`."""

    created: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "renewed": self.renewed,
            "kept": self.kept,
            "subscriptions": [s.as_dict() for s in self.subscriptions],
        }


def ensure_subscriptions(
    client: WebhookClient,
    callback_url: str,
    verification_token: str,
    *,
    data_types: Iterable[str] = WEBHOOK_DATA_TYPES,
    event_types: Iterable[str] = EVENT_TYPES,
    renew_within: timedelta = DEFAULT_RENEW_WITHIN,
    now: datetime | None = None,
) -> EnsureReport:
    """One subscription per (event_type, data_type) to `callback_url`: missing ones created, those expiring
    within `renew_within` renewed, the rest kept. Subscriptions to other callbacks are left alone."""
    now = as_utc(now or utc_now())
    report = EnsureReport()
    existing = {(s.event_type, s.data_type): s for s in client.list() if s.callback_url == callback_url}
    for data_type in data_types:
        for event_type in event_types:
            name = f"{event_type}/{data_type}"
            current = existing.get((event_type, data_type))
            if current is None:
                report.subscriptions.append(
                    client.create(callback_url, verification_token, event_type, data_type)
                )
                report.created.append(name)
            elif current.expiration_time - now <= renew_within:
                report.subscriptions.append(client.renew(current.id))
                report.renewed.append(name)
            else:
                report.subscriptions.append(current)
                report.kept.append(name)
    return report


def client_from_settings(settings: Settings) -> WebhookClient:
    """The application's subscription client (`OURA_API_BASE_URL`, client id and secret)."""
    client_id, client_secret, _ = settings.oauth_client()
    return WebhookClient(settings.api_base_url, client_id, client_secret)


def verification_token(settings: Settings) -> str:
    """`OURA_WEBHOOK_VERIFICATION_TOKEN`, or the ConfigError naming it."""
    if not settings.webhook_verification_token:
        raise ConfigError(
            "OURA_WEBHOOK_VERIFICATION_TOKEN is not set (needed for webhooks); set it, or run with "
            "OURA_ASSETS_DEMO=1 to use the bundled simulator"
        )
    return settings.webhook_verification_token


def ensure_from_settings(settings: Settings, renew_within: timedelta = DEFAULT_RENEW_WITHIN) -> EnsureReport:
    """`ensure_subscriptions` for the configured callback (`OURA_WEBHOOK_CALLBACK_URL`) and token."""
    token = verification_token(settings)
    with client_from_settings(settings) as client:
        return ensure_subscriptions(client, settings.webhook_callback_url, token, renew_within=renew_within)


def recreate_subscriptions(
    client: WebhookClient, callback_url: str, verification_token: str, *, now: datetime | None = None
) -> EnsureReport:
    """Delete every subscription to `callback_url` and create the set again (subscriptions that went quiet:
    `webhook_coverage.py`). Subscriptions to other callbacks are left alone."""
    for subscription in client.list():
        if subscription.callback_url == callback_url:
            client.delete(subscription.id)
    return ensure_subscriptions(client, callback_url, verification_token, now=now)


def recreate_from_settings(settings: Settings) -> EnsureReport:
    """`recreate_subscriptions` for the configured callback and token."""
    token = verification_token(settings)
    with client_from_settings(settings) as client:
        return recreate_subscriptions(client, settings.webhook_callback_url, token)
