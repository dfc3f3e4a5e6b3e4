"""The Oura webhook receiver (CONTRACT §3): the callback verification and the signed change events.

`GET …/webhooks/oura?verification_token=…&challenge=…` is how Oura checks, when a subscription is created,
that the callback is ours: it answers Oura's own shape `{"challenge": …}` (no envelope) when the token is
`OURA_WEBHOOK_VERIFICATION_TOKEN`, else 401.

`POST …/webhooks/oura` is an event `{event_type, data_type, object_id, event_time, user_id}` about one
document. The route:
- verifies `x-oura-signature` over `x-oura-timestamp` + the raw body (`oura.webhooks.signature_valid`),
  refusing a timestamp more than 5 minutes away from now (a captured event replayed later) with 401 before
  anything is read or stored;
- never calls Oura: it only queues a sync through the ledger, so it answers well within Oura's 10 s (its one
  wait is the warehouse lock, bounded at `WEBHOOK_LOCK_WAIT_S`; a busy warehouse answers 503, and Oura
  delivers again);
- dedupes: an event is keyed by a hash of (event_type, data_type, object_id, event_time, user_id) in
  `patient_graph.webhook_events`; a redelivery is acknowledged and only counted;
- maps `user_id` to the patient through `wearable_connections.oura_user_id` (active connections only);
- queues a targeted sync (`ledger.request_sync`; the `oura_sync_requests` sensor turns it into a run), or
  joins a request of the patient still queued that covers the days, so one phone sync announcing several
  documents costs one run. The day: the stored document's `day` when the warehouse holds it (an update or a
  delete); otherwise the event carries none (Oura sends no `day`), so the days around `event_time`,
  and the run fetches them: from the UTC date minus the nightly lookback (`OURA_ASSETS_LOOKBACK_DAYS`) and
  one more day (a ring that was offline syncs older days late; a `day` is the patient's local date, up to
  14 hours either side of UTC) to the UTC date plus one. Events are never trusted for content, so
  out-of-order arrival cannot regress data: every event leads to a fetch of what Oura holds now;
- on `delete`, removes the document from its raw table at once (the last version kept in
  `oura_raw.document_revisions`) and queues its day, whose run rebuilds the normalized rows (the raw mirror
  of that window also drops whatever Oura no longer returns).

Unknown users are acknowledged with 200 and nothing stored: Oura retries a failed delivery about 10 times
over an hour (OURA-NOTES.md), and retrying cannot make an unknown user known (a patient connected since is
covered by the initial sync of their connection). Bad or stale signatures get 401 and malformed bodies 422,
storing nothing. Data types we do not ingest are acknowledged and recorded as `ignored`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oura_assets import ledger
from oura_assets import warehouse as wh
from oura_assets.api.responses import NO_STORE, ApiError, ok
from oura_assets.clock import as_utc, utc_now
from oura_assets.config import Settings
from oura_assets.domain import DOCUMENT_COLLECTIONS
from oura_assets.oura.webhooks import signature_valid, timestamp_instant

log = logging.getLogger("oura_assets.api")

SIGNATURE_MAX_AGE = timedelta(minutes=5)
"""How far `x-oura-timestamp` may be from now, either way (clock skew included)."""
WEBHOOK_LOCK_WAIT_S = 5.0
"""The receiver's wait for the warehouse lock: Oura wants an answer within 10 s, and retries a 503."""
EVENT_DAY_SPREAD = timedelta(days=1)
MAX_EVENT_AGE = timedelta(days=30)

QUEUED = "sync_queued"
DELETED = "deleted"
IGNORED = "ignored"


class WebhookEvent(BaseModel):
    """Oura's event body. Unknown extra fields are tolerated (Oura adds fields without notice)."""

    model_config = ConfigDict(extra="ignore")

    event_type: Literal["create", "update", "delete"]
    data_type: str
    object_id: str
    event_time: datetime | None = None
    user_id: str

    def key(self) -> str:
        """The dedupe key: the same event redelivered hashes the same."""
        when = "" if self.event_time is None else as_utc(self.event_time).isoformat()
        parts = (self.event_type, self.data_type, self.object_id, when, self.user_id)
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def event_days(
    event_time: datetime | None, stored_day: date | None, now: datetime, lookback_days: int
) -> tuple[date, date]:
    """The days a sync for the event covers: the stored document's day, else the days around the event."""
    if stored_day is not None:
        return stored_day, stored_day
    when = as_utc(event_time) if event_time is not None else now
    if abs(when - now) > MAX_EVENT_AGE:  # a nonsensical event_time: fall back on the receipt time
        when = now
    day = when.date()
    return day - EVENT_DAY_SPREAD - timedelta(days=lookback_days), day + EVENT_DAY_SPREAD


@dataclass
class WebhookReceiver:
    """What the webhook routes do, as plain blocking functions (run in a worker thread)."""

    settings: Settings
    warehouse: wh.Warehouse
    now: Callable[[], datetime] = utc_now
    lock_wait_s: float = WEBHOOK_LOCK_WAIT_S

    def challenge(self, token: str | None, challenge: str | None) -> str:
        expected = self.settings.webhook_verification_token
        if not expected or token is None or not hmac.compare_digest(expected.encode(), token.encode()):
            raise unauthorized("the verification token is not ours")
        if not challenge:
            raise ApiError(422, "invalid_request", "the challenge parameter is missing")
        return challenge

    def verify(self, headers: Any, body: bytes) -> None:
        """401 unless the body is signed with our client secret at a timestamp within 5 minutes of now."""
        secret = self.settings.client_secret
        given, stamp = headers.get("x-oura-signature"), headers.get("x-oura-timestamp")
        if not secret:
            raise unauthorized("webhooks are not configured (no client secret)")
        if not given or not stamp:
            raise unauthorized("x-oura-signature and x-oura-timestamp are required")
        instant = timestamp_instant(stamp)
        if instant is None:
            raise unauthorized("x-oura-timestamp is not a Unix time")
        if abs(as_utc(self.now()) - instant) > SIGNATURE_MAX_AGE:
            raise unauthorized("the event's timestamp is more than 5 minutes away from now")
        if not signature_valid(secret, stamp, body, given):
            raise unauthorized("the signature does not match")

    def receive(self, event: WebhookEvent) -> dict[str, Any]:
        """Record the event and queue its sync, in one transaction; see the module docstring."""
        now = as_utc(self.now())
        key = event.key()
        answer: dict[str, Any] = {}
        for attempt in self.warehouse.attempts("api: oura webhook event", timeout_s=self.lock_wait_s):
            with attempt as conn:
                # Answered after the loop, never from inside it: a try that lost a DuckLake conflict at
                # COMMIT runs again (`Warehouse.attempts`).
                answer = self._land(conn, event, key, now)
        return answer

    def _land(self, conn: Any, event: WebhookEvent, key: str, now: datetime) -> dict[str, Any]:
        """`receive`'s transaction: record the event, queue (or join) its sync; the answer to give."""
        if wh.webhook_event_seen(conn, key):
            return {"status": "duplicate"}
        patient_id = wh.patient_for_oura_user(conn, event.user_id)
        if patient_id is None:
            log.info(
                "webhook %s/%s for an Oura user we do not know: ignored", event.event_type, event.data_type
            )
            return {"status": "unknown_user"}
        record = wh.WebhookEventRecord(
            event_key=key,
            patient_id=patient_id,
            event_type=event.event_type,
            data_type=event.data_type,
            object_id=event.object_id,
            event_time=event.event_time,
            action=IGNORED,
        )
        if event.data_type not in DOCUMENT_COLLECTIONS:
            wh.record_webhook_event(conn, record, now)
            return {"status": IGNORED}
        if event.event_type == "delete":
            stored = wh.delete_raw_document(conn, event.data_type, patient_id, event.object_id, now)
            action = DELETED
        else:
            stored = wh.raw_document_day(conn, event.data_type, patient_id, event.object_id)
            action = QUEUED
        start, end = event_days(event.event_time, stored, now, self.settings.lookback_days)
        sync_id = wh.queued_request_covering(conn, patient_id, start, end) or ledger.request_sync(
            conn, patient_id=patient_id, start_day=start, end_day=end
        )
        wh.record_webhook_event(
            conn,
            wh.WebhookEventRecord(
                **{
                    **record.__dict__,
                    "action": action,
                    "start_day": start,
                    "end_day": end,
                    "sync_id": sync_id,
                }
            ),
            now,
        )
        log.info(
            "webhook %s/%s for patient %s: %s, sync %s for %s..%s",
            event.event_type,
            event.data_type,
            patient_id,
            action,
            sync_id,
            start,
            end,
        )
        return {
            "status": action,
            "syncId": sync_id,
            "startDate": start.isoformat(),
            "endDate": end.isoformat(),
        }


def _receiver(request: Request) -> WebhookReceiver:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "starting", "the service is starting; try again shortly", {"Retry-After": "1"})
    receiver = getattr(request.app.state, "webhook_receiver", None)
    if receiver is None or receiver.warehouse is not service.warehouse:
        receiver = WebhookReceiver(settings=service.settings, warehouse=service.warehouse, now=service.now)
        request.app.state.webhook_receiver = receiver
    return receiver


async def verification(request: Request) -> Response:
    params = request.query_params
    challenge = _receiver(request).challenge(params.get("verification_token"), params.get("challenge"))
    # Oura's own shape, not our envelope: Oura compares the echoed challenge.
    return JSONResponse({"challenge": challenge}, headers=NO_STORE)


async def event(request: Request) -> Response:
    receiver = _receiver(request)
    # RequestLimitsMiddleware caps this read (413 past MAX_BODY_BYTES).
    body = await request.body()
    receiver.verify(request.headers, body)
    try:
        parsed = WebhookEvent.model_validate_json(body)
    except ValidationError:
        # Signed by Oura yet not an event we understand: nothing is stored, and the fields are not echoed.
        raise ApiError(422, "invalid_request", "the body is not an Oura webhook event") from None
    return ok(await run_in_threadpool(receiver.receive, parsed))


def webhook_routes(prefix: str) -> list[Route]:
    """The receiver's routes under the API's prefix."""
    return [
        Route(f"{prefix}/webhooks/oura", verification, methods=["GET"]),
        Route(f"{prefix}/webhooks/oura", event, methods=["POST"]),
    ]
