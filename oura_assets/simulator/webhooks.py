"""Oura's webhooks, simulated: the subscription routes, the callback verification, and signed events.

- `/v2/webhook/subscription` (GET list, POST create), `/v2/webhook/subscription/{id}` (GET, PUT, DELETE),
  `/v2/webhook/subscription/renew/{id}` (PUT), authenticated with `x-client-id` / `x-client-secret` of a
  registered client. Bodies are the spec's `WebhookSubscriptionModel`; an unknown id answers 403 ("Webhook
  with specified id does not exist."), a body that is not the spec's request 422.
- Create (and an update that changes the callback or the token) first verifies the callback as Oura does:
  `GET callback_url?verification_token=…&challenge=…` must answer 200 with `{"challenge": <the same>}`;
  otherwise nothing is created (400).
- Subscriptions expire `ttl` after creation or renewal, on the data clock.
- Events: `POST /_sim/webhooks/emit` (simulator-only) sends `{event_type, data_type, object_id, event_time,
  user_id}` to every subscription of that (event_type, data_type), signed with the subscribing client's
  secret (`oura.webhooks.sign_event`) at the wall clock. It takes either an `object_id` or a `day` (the
  documents of that day as served now), and can send every event `redeliver` more times and in
  `out_of_order` (reversed) order, as Oura does when it retries. `POST /_sim/webhooks/changes {users,
  before, after}` sends create/update/delete events for what changed between two data-clock instants (a
  new day synced, a revised document, a period that disappeared), with the same `redeliver` and
  `out_of_order` knobs.
The simulator does not model which users granted which client: every subscription receives every user's
events. Deliveries are recorded (`GET /_sim/webhooks`).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oura_assets.oura.webhooks import sign_event
from oura_assets.simulator.data.identity import day_of_id
from oura_assets.simulator.data.queries import documents_for_day
from oura_assets.simulator.data.users import profile
from oura_assets.simulator.problems import Problem
from oura_assets.simulator.state import SimulatorState
from oura_assets.tls import tls_context

OPERATIONS = ("create", "update", "delete")
# ExtApiV2DataType of the spec.
DATA_TYPES = (
    "tag",
    "enhanced_tag",
    "workout",
    "session",
    "sleep",
    "daily_sleep",
    "daily_readiness",
    "daily_activity",
    "daily_spo2",
    "sleep_time",
    "rest_mode_period",
    "ring_configuration",
    "daily_stress",
    "daily_cardiovascular_age",
    "daily_resilience",
    "vo2_max",
    "meal",
)
DEFAULT_TTL = timedelta(days=30)
CALLBACK_TIMEOUT_S = 10.0
MAX_CHANGE_DAYS = 14


@dataclass
class SimSubscription:
    id: str
    client_id: str
    callback_url: str
    verification_token: str
    event_type: str
    data_type: str
    expiration_time: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "callback_url": self.callback_url,
            "event_type": self.event_type,
            "data_type": self.data_type,
            "expiration_time": self.expiration_time.isoformat(),
        }


def _missing(field: str) -> Problem:
    return Problem(422, f"{field}: Field required")


class WebhookHub:
    """Subscriptions by id and the deliveries made, behind one lock; HTTP to callbacks happens outside it."""

    def __init__(self, state: SimulatorState, ttl: timedelta = DEFAULT_TTL) -> None:
        self._state = state
        self.ttl = ttl
        self._lock = threading.Lock()
        self._subscriptions: dict[str, SimSubscription] = {}
        self.deliveries: list[dict[str, Any]] = []
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start_watch(self, interval_s: float) -> None:
        """Send the events of what changed in the data every `interval_s` (`webhook_watch_s`)."""
        if self._watcher is not None:
            return
        self._watch_stop.clear()
        self._watcher = threading.Thread(
            target=self._watch, args=(interval_s,), name="simulator webhook watch", daemon=True
        )
        self._watcher.start()

    def stop_watch(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._watcher = None

    def _watch(self, interval_s: float) -> None:
        last = self._state.clock.now()
        while not self._watch_stop.wait(interval_s):
            now = self._state.clock.now()
            if now != last:
                self.announce_changes(last, now)
            last = now

    def announce_changes(self, before: datetime, after: datetime) -> list[dict[str, Any]]:
        """Deliver the events of every subscribed data type's changes between two instants, for every user
        holding a grant; what a watch tick does."""
        with self._lock:
            types = sorted({s.data_type for s in self._subscriptions.values() if s.data_type in DATA_TYPES})
        if not types:
            return []
        events = [
            e
            for user in self._state.grants.users()
            for t in types
            for e in self.changes(user, t, before, after)
        ]
        return self.deliver(events) if events else []

    def _client(self, request: Request) -> str:
        client_id = request.headers.get("x-client-id", "")
        secret = request.headers.get("x-client-secret", "")
        client = self._state.client(client_id)
        if client is None or not secrets.compare_digest(client.secret.encode(), secret.encode()):
            raise Problem(401, "Invalid client credentials.")
        return client_id

    def _owned(self, client_id: str, subscription_id: str) -> SimSubscription:
        found = self._subscriptions.get(subscription_id)
        if found is None or found.client_id != client_id:
            raise Problem(403, "Webhook with specified id does not exist.")
        return found

    @staticmethod
    def verify_callback(callback_url: str, token: str) -> None:
        """Oura's check that the callback is the subscriber's: it must echo a fresh challenge."""
        challenge = secrets.token_urlsafe(16)
        try:
            answer = httpx.get(
                callback_url,
                params={"verification_token": token, "challenge": challenge},
                timeout=CALLBACK_TIMEOUT_S,
                verify=tls_context(),
            )
            echoed = answer.json().get("challenge") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            echoed = None
        if echoed != challenge:
            raise Problem(400, "Callback verification failed: the callback did not echo the challenge.")

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            value = json.loads(await request.body() or b"null")
        except json.JSONDecodeError:
            raise Problem(422, "The body is not JSON.") from None
        if not isinstance(value, dict):
            raise Problem(422, "The body must be a JSON object.")
        return value

    @staticmethod
    def _checked(body: dict[str, Any], required: Iterable[str]) -> dict[str, Any]:
        for name in required:
            if not isinstance(body.get(name), str) or not body[name]:
                raise _missing(name)
        if body.get("event_type") is not None and body["event_type"] not in OPERATIONS:
            raise Problem(422, f"event_type: Input should be one of {', '.join(OPERATIONS)}")
        if body.get("data_type") is not None and body["data_type"] not in DATA_TYPES:
            raise Problem(422, "data_type: Input should be an ExtApiV2DataType")
        return body

    async def list_or_create(self, request: Request) -> Response:
        client_id = self._client(request)
        if request.method == "GET":
            with self._lock:
                mine = [s.as_json() for s in self._subscriptions.values() if s.client_id == client_id]
            return JSONResponse(mine)
        body = self._checked(
            await self._body(request), ("callback_url", "verification_token", "event_type", "data_type")
        )
        await run_in_threadpool(self.verify_callback, body["callback_url"], body["verification_token"])
        subscription = SimSubscription(
            id=str(uuid.uuid4()),
            client_id=client_id,
            callback_url=body["callback_url"],
            verification_token=body["verification_token"],
            event_type=body["event_type"],
            data_type=body["data_type"],
            expiration_time=self._state.clock.now() + self.ttl,
        )
        with self._lock:
            self._subscriptions[subscription.id] = subscription
        return JSONResponse(subscription.as_json(), status_code=201)

    async def one(self, request: Request) -> Response:
        client_id = self._client(request)
        subscription_id = request.path_params["id"]
        if request.method == "GET":
            with self._lock:
                return JSONResponse(self._owned(client_id, subscription_id).as_json())
        if request.method == "DELETE":
            with self._lock:
                self._owned(client_id, subscription_id)
                del self._subscriptions[subscription_id]
            return Response(status_code=204)
        body = self._checked(await self._body(request), ("verification_token",))
        with self._lock:
            current = self._owned(client_id, subscription_id)
        callback = body.get("callback_url") or current.callback_url
        await run_in_threadpool(self.verify_callback, callback, body["verification_token"])
        with self._lock:
            current = self._owned(client_id, subscription_id)
            current.callback_url = callback
            current.verification_token = body["verification_token"]
            current.event_type = body.get("event_type") or current.event_type
            current.data_type = body.get("data_type") or current.data_type
            return JSONResponse(current.as_json())

    async def renew(self, request: Request) -> Response:
        client_id = self._client(request)
        with self._lock:
            current = self._owned(client_id, request.path_params["id"])
            current.expiration_time = self._state.clock.now() + self.ttl
            return JSONResponse(current.as_json())

    def subscribers(self, event_type: str, data_type: str) -> list[SimSubscription]:
        now = self._state.clock.now()
        with self._lock:
            return [
                s
                for s in self._subscriptions.values()
                if s.event_type == event_type and s.data_type == data_type and s.expiration_time > now
            ]

    def deliver(
        self, events: list[dict[str, Any]], *, redeliver: int = 0, out_of_order: bool = False
    ) -> list[dict[str, Any]]:
        """POST each event to its subscribers, signed; each `1 + redeliver` times; returns the results."""
        order = list(reversed(events)) if out_of_order else list(events)
        results = []
        for copy in range(1 + redeliver):
            for event in order:
                for subscription in self.subscribers(event["event_type"], event["data_type"]):
                    client = self._state.client(subscription.client_id)
                    if client is None:
                        continue
                    body = json.dumps(event).encode()
                    stamp = str(int(self._state.clock.wall()))
                    try:
                        answer = httpx.post(
                            subscription.callback_url,
                            content=body,
                            headers=sign_event(client.secret, stamp, body),
                            timeout=CALLBACK_TIMEOUT_S,
                            verify=tls_context(),
                        )
                        status: int | None = answer.status_code
                    except httpx.HTTPError:
                        status = None
                    result = {"subscription_id": subscription.id, "copy": copy, "status": status, **event}
                    results.append(result)
        with self._lock:
            self.deliveries.extend(results)
        return results

    def event(self, user: str, event_type: str, data_type: str, object_id: str) -> dict[str, Any]:
        return {
            "event_type": event_type,
            "data_type": data_type,
            "object_id": object_id,
            "event_time": self._state.clock.now().isoformat(),
            "user_id": profile(user).user_id,
        }

    def events_for(self, user: str, event_type: str, data_type: str, day: date) -> list[dict[str, Any]]:
        """One event per document of `data_type` the user has on `day` as served now."""
        docs = documents_for_day(user, data_type, day, self._state.clock.now())
        return [self.event(user, event_type, data_type, str(doc["id"])) for doc in docs]

    def changes(self, user: str, data_type: str, before: datetime, after: datetime) -> list[dict[str, Any]]:
        """create/update/delete events for what the user's `data_type` documents did between two instants."""
        first = (min(before, after) - timedelta(days=2)).date()
        last = max(before, after).date() + timedelta(days=1)
        first = max(first, last - timedelta(days=MAX_CHANGE_DAYS))
        events = []
        day = first
        while day <= last:
            old = {d["id"]: d for d in documents_for_day(user, data_type, day, before)}
            new = {d["id"]: d for d in documents_for_day(user, data_type, day, after)}
            for doc_id in new.keys() - old.keys():
                events.append(self.event(user, "create", data_type, doc_id))
            for doc_id in old.keys() - new.keys():
                events.append(self.event(user, "delete", data_type, doc_id))
            for doc_id in new.keys() & old.keys():
                if json.dumps(new[doc_id], sort_keys=True) != json.dumps(old[doc_id], sort_keys=True):
                    events.append(self.event(user, "update", data_type, doc_id))
            day += timedelta(days=1)
        return events

    async def emit(self, request: Request) -> Response:
        body = await self._body(request)
        user, data_type = body.get("user"), body.get("data_type")
        event_type = body.get("event_type", "create")
        if (
            not isinstance(user, str)
            or not user
            or data_type not in DATA_TYPES
            or event_type not in OPERATIONS
        ):
            raise Problem(
                400, "user, data_type (an ExtApiV2DataType) and event_type (create|update|delete) please"
            )
        if body.get("object_id"):
            events = [self.event(user, event_type, data_type, str(body["object_id"]))]
        elif body.get("day"):
            try:
                day = date.fromisoformat(str(body["day"]))
            except ValueError:
                raise Problem(400, "day must be YYYY-MM-DD") from None
            events = self.events_for(user, event_type, data_type, day)
        else:
            raise Problem(400, "object_id or day is required")
        redeliver = int(body.get("redeliver", 0))
        results = await run_in_threadpool(
            self.deliver,
            events,
            redeliver=max(0, min(redeliver, 10)),
            out_of_order=bool(body.get("out_of_order")),
        )
        return JSONResponse({"events": events, "deliveries": results})

    async def emit_changes(self, request: Request) -> Response:
        body = await self._body(request)
        users, before, after = body.get("users"), body.get("before"), body.get("after")
        try:
            start, end = datetime.fromisoformat(str(before)), datetime.fromisoformat(str(after))
        except ValueError:
            raise Problem(400, "before and after must be ISO 8601 date-times with an offset") from None
        if not isinstance(users, list) or start.tzinfo is None or end.tzinfo is None:
            raise Problem(400, "users (a list of names), before and after (with offsets) please")
        types = body.get("data_types") or ["daily_readiness", "daily_sleep", "sleep", "daily_activity"]
        events = [e for user in users for t in types for e in self.changes(str(user), t, start, end)]
        results = await run_in_threadpool(
            self.deliver,
            events,
            redeliver=max(0, min(int(body.get("redeliver", 0)), 10)),
            out_of_order=bool(body.get("out_of_order")),
        )
        return JSONResponse({"events": events, "deliveries": results})

    async def status(self, request: Request) -> Response:
        with self._lock:
            subscriptions = [s.as_json() for s in self._subscriptions.values()]
            return JSONResponse({"subscriptions": subscriptions, "deliveries": list(self.deliveries)})

    def routes(self) -> list[Route]:
        return [
            Route("/v2/webhook/subscription", self.list_or_create, methods=["GET", "POST"]),
            Route("/v2/webhook/subscription/renew/{id}", self.renew, methods=["PUT"]),
            Route("/v2/webhook/subscription/{id}", self.one, methods=["GET", "PUT", "DELETE"]),
            Route("/_sim/webhooks", self.status, methods=["GET"]),
            Route("/_sim/webhooks/emit", self.emit, methods=["POST"]),
            Route("/_sim/webhooks/changes", self.emit_changes, methods=["POST"]),
        ]


def document_day(user: str, object_id: str) -> date | None:
    """The day a simulated document id encodes (tests use it to check the receiver's choice of day)."""
    return day_of_id(profile(user), object_id)
