"""The `/v2/usercollection/*` routes: bearer auth, limits, Oura's parameter semantics and `next_token` paging.

Where Oura's behaviour is reported inconsistently each plausible reading is a knob (`readings.py`), and
the default is the strictest, so a client that copes here copes with Oura (see
../../shared/reference/OURA-NOTES.md):
- document routes: by default `end_date` is exclusive (a date-only end is midnight and drops that day), and on
  `sleep` `start_date` is exclusive too (open-wearables #1007, #1161); the `date_ends` reading also offers
  both ends inclusive and a superset a day wider on each side; missing `start_date` is `end_date` - 1 day,
  missing `end_date` is today in the user's zone on the data clock;
- date-times in query parameters are read as Oura's framework (FastAPI on pydantic 2) reads them: a `T`,
  `t`, `_` or space separator, `Z` or `±HH:MM` or `±HHMM` offsets, fractions (pydantic would also take Unix
  seconds; nobody reports Oura doing so, so those stay 422 here);
- `heartrate`: date-only `start_datetime`/`end_datetime` are ignored (hedgertronic/oura-ring #3), so the
  window falls back to the last 24 hours; ranges over 30 days answer 400; both bounds are inclusive, so a
  sample on a chunk boundary comes back from both chunks (open-wearables #889); an unencoded `+` in the
  offset arrives as a space and answers 422;
- `next_token` is opaque, signed, and bound to the user, the route and the resolved window; replayed with
  other parameters it answers 400. It also pins the data clock of the first page, so a listing is one
  consistent snapshot even while days sync underneath it;
- `fields` (comma-separated) keeps only those fields of each document, beside the ones always returned (`id`
  and the document's day; `timestamp` on heart rate) [spec]; unknown names are ignored. `tag`,
  `enhanced_tag` and `daily_resilience` do not support it and answer every field [spec];
- `ring_configuration` takes no dates [spec]: every ring the user has set up, whatever is asked;
- 403: a collection outside the scopes the user granted answers Oura's 403, as does every route of a user
  whose membership has expired (the `forbidden` user fault); the detail says which.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oura_assets.clock import as_utc
from oura_assets.simulator import data
from oura_assets.simulator.faults import ARRIVED
from oura_assets.simulator.grant_store import Principal, TokenRejected
from oura_assets.simulator.problems import Problem, ValidationProblem
from oura_assets.simulator.readings import render
from oura_assets.simulator.state import SimulatorState

COLLECTION_SCOPES = {
    "daily_readiness": "daily",
    "daily_sleep": "daily",
    "sleep": "daily",
    "daily_activity": "daily",
    "workout": "workout",
    "session": "session",
    "tag": "tag",
    "enhanced_tag": "tag",
    "daily_spo2": "spo2Daily",
    "daily_stress": "daily",
    "daily_resilience": "daily",
    "daily_cardiovascular_age": "daily",
    "vO2_max": "daily",
    "sleep_time": "daily",
    "rest_mode_period": "daily",
    "ring_configuration": "",
}
# Routes whose `fields` parameter is "N/A. This route does not support field selection yet" [spec].
NO_FIELD_SELECTION = frozenset({"tag", "enhanced_tag", "daily_resilience"})
# Returned whatever `fields` asks for: what a client keys and dates a document by [spec: "in addition to the
# always returned fields"; the spec does not list them, these are the ones no client can do without].
ALWAYS_RETURNED = ("id", "day", "start_day")
HEARTRATE_ALWAYS_RETURNED = ("timestamp",)
HEARTRATE_MAX_RANGE = timedelta(days=30)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# pydantic (a Dagster dependency) is what Oura's FastAPI validates query parameters with, so its datetime
# parser is the faithful one: `2024-06-10 07:00:00+0200` is accepted, `…T07:00:00 02:00` (an unencoded
# `+`) is not.
_DATETIME = pydantic.TypeAdapter(datetime)
_DATETIME_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt_ ]\d{2}:\d{2}.*")


def _datetime(raw: str) -> datetime | None:
    if not _DATETIME_SHAPE.fullmatch(raw):
        return None
    try:
        return _DATETIME.validate_python(raw)
    except pydantic.ValidationError:
        return None


def _parse_date_or_datetime(name: str, raw: str) -> date | datetime:
    try:
        if _DATE.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:
        pass
    else:
        parsed = _datetime(raw)
        if parsed is not None:
            return parsed
    raise ValidationProblem(
        name, "Input should be a valid date or datetime (YYYY-MM-DD or ISO 8601 date-time)", "date_type", raw
    )


def _selected_fields(request: Request) -> frozenset[str] | None:
    """The names in `fields`, or None when the request asks for every field."""
    raw = request.query_params.get("fields")
    if raw is None or not raw.strip():
        return None
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def select_fields(items: list[Any], fields: frozenset[str] | None, always: tuple[str, ...]) -> list[Any]:
    """Copies of `items` with only `fields` and the always-returned ones (cached documents stay untouched)."""
    if fields is None:
        return items
    keep = fields | set(always)
    return [{k: v for k, v in item.items() if k in keep} for item in items]


def _parse_datetime(name: str, raw: str) -> datetime | None:
    """A heart-rate bound: None for a date-only value, which Oura ignores."""
    if _DATE.fullmatch(raw):
        return None
    parsed = _datetime(raw)
    if parsed is not None:
        return as_utc(parsed)
    raise ValidationProblem(
        name, "Input should be a valid datetime (ISO 8601 with an offset)", "datetime_type", raw
    )


class PageTokens:
    """Signed, opaque `next_token`s carrying the position, the snapshot time and what they were issued for."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()[:24]

    def issue(self, binding: str, offset: int, snapshot: datetime) -> str:
        payload = json.dumps({"b": self._digest(binding), "o": offset, "n": snapshot.timestamp()}).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    @staticmethod
    def _digest(binding: str) -> str:
        return hashlib.sha256(binding.encode()).hexdigest()[:24]

    def read(self, token: str) -> tuple[str, int, datetime]:
        try:
            encoded, signature = token.rsplit(".", 1)
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            if not hmac.compare_digest(signature, self._sign(payload)):
                raise ValueError("bad signature")
            fields = json.loads(payload)
            return str(fields["b"]), int(fields["o"]), datetime.fromtimestamp(float(fields["n"]), UTC)
        except (ValueError, KeyError, TypeError):
            raise Problem(400, "The next_token is invalid or has expired.") from None

    def check(self, token: str, binding: Callable[[datetime], str]) -> tuple[int, datetime]:
        digest, offset, snapshot = self.read(token)
        if digest != self._digest(binding(snapshot)):
            raise Problem(400, "The next_token does not match the request parameters.")
        return offset, snapshot


@dataclass
class UserCollectionApi:
    state: SimulatorState
    tokens: PageTokens

    def _principal(self, request: Request, scope: str | None) -> Principal:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Problem(401, "Missing or malformed Authorization header.", {"WWW-Authenticate": "Bearer"})
        try:
            principal = self.state.grants.authenticate(token.strip())
        except TokenRejected as exc:
            raise Problem(401, exc.detail, {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        limited = self.state.rate_windows.check(
            principal.client_id, principal.token_digest, at=request.scope.get(ARRIVED)
        )
        if limited is not None:
            self.state.request_stats.count("rate_limited")
            raise Problem(
                429,
                f"Request rate limit exceeded ({limited.limit} per {limited.window_s:g} s, {limited.tier}).",
                {
                    "Retry-After": str(limited.retry_after_s),
                    "X-RateLimit-Limit": str(limited.limit),
                    "X-RateLimit-Window": f"{limited.window_s:g}",
                    "X-RateLimit-Reset": str(limited.reset_epoch),
                    "X-RateLimit-Tier": limited.tier,
                },
            )
        if self.state.faults.user(principal.user).forbidden:
            raise Problem(
                403, "The user's Oura membership has expired; their data is not available via the API."
            )
        if scope and scope not in principal.scopes:
            # The patient did not grant this collection's scope (or withdrew it since): only this route fails.
            raise Problem(403, f"The access token lacks the '{scope}' scope needed for this route.")
        return principal

    def _collection(self, request: Request) -> str:
        collection = request.path_params["collection"]
        if collection not in COLLECTION_SCOPES:
            raise Problem(404, "Not Found")
        return collection

    def _window(self, request: Request, user: str, snapshot: datetime) -> tuple[datetime, datetime]:
        """The request's [start, end) as naive local wall times of the user (`_days` makes start exclusive on
        `sleep`)."""
        zone = data.profile(user).zone
        raw_start, raw_end = request.query_params.get("start_date"), request.query_params.get("end_date")
        start = _parse_date_or_datetime("start_date", raw_start) if raw_start else None
        end = _parse_date_or_datetime("end_date", raw_end) if raw_end else None

        def wall(value: date | datetime) -> datetime:
            if isinstance(value, datetime):
                return value.astimezone(zone).replace(tzinfo=None) if value.tzinfo else value
            return datetime.combine(value, time())

        end_wall = wall(end) if end is not None else wall(snapshot.astimezone(zone).date())
        start_wall = wall(start) if start is not None else end_wall - timedelta(days=1)
        if start_wall > end_wall:
            raise Problem(400, "start_date must not be after end_date.")
        return start_wall, end_wall

    @staticmethod
    def _days(
        start: datetime, end: datetime, start_exclusive: bool, date_ends: str = "exclusive"
    ) -> list[date]:
        if date_ends != "exclusive":
            widen = timedelta(days=1 if date_ends == "superset" else 0)
            first, last = start.date() - widen, end.date() + widen
            return [first + timedelta(days=n) for n in range((last - first).days + 1)]
        days = []
        day = start.date() - timedelta(days=1)
        while day <= end.date():
            midnight = datetime.combine(day, time())
            after_start = midnight > start if start_exclusive else midnight >= start
            if after_start and midnight < end:
                days.append(day)
            day += timedelta(days=1)
        return days

    async def list_documents(self, request: Request) -> Response:
        collection = self._collection(request)
        principal = self._principal(request, COLLECTION_SCOPES[collection])

        undated = collection in data.UNDATED_COLLECTIONS

        def binding(snapshot: datetime) -> str:
            if undated:
                return f"{principal.user}|{collection}"
            start, end = self._window(request, principal.user, snapshot)
            return f"{principal.user}|{collection}|{start.isoformat()}|{end.isoformat()}"

        offset, snapshot = self._page_start(request, binding)
        days: list[date] = []
        if not undated:
            start, end = self._window(request, principal.user, snapshot)
            days = self._days(start, end, collection == "sleep", self.state.faults.readings().date_ends)
        docs = data.documents(principal.user, collection, days, snapshot)
        fields = None if collection in NO_FIELD_SELECTION else _selected_fields(request)
        return self._page(
            docs, offset, snapshot, binding(snapshot), self.state.config.page_size_for(collection), fields
        )

    def _page_start(self, request: Request, binding: Callable[[datetime], str]) -> tuple[int, datetime]:
        token = request.query_params.get("next_token")
        if token:
            return self.tokens.check(token, binding)
        snapshot = self.state.clock.now()
        binding(snapshot)  # validates the parameters before anything is served
        return 0, snapshot

    def _page(
        self,
        items: list[Any],
        offset: int,
        snapshot: datetime,
        binding: str,
        size: int,
        fields: frozenset[str] | None = None,
    ) -> Response:
        page = select_fields(items[offset : offset + size], fields, ALWAYS_RETURNED)
        more = offset + size < len(items)
        next_token = self.tokens.issue(binding, offset + size, snapshot) if more else None
        style = self.state.faults.readings().timestamps
        return JSONResponse({"data": render(page, style), "next_token": next_token})

    async def get_document(self, request: Request) -> Response:
        collection = self._collection(request)
        principal = self._principal(request, COLLECTION_SCOPES[collection])
        doc = data.find_document(
            principal.user, collection, request.path_params["document_id"], self.state.clock.now()
        )
        if doc is None:
            raise Problem(404, "Document not found.")
        return JSONResponse(render(doc, self.state.faults.readings().timestamps))

    def _heartrate_window(self, request: Request, snapshot: datetime) -> tuple[datetime, datetime]:
        raw_start = request.query_params.get("start_datetime")
        raw_end = request.query_params.get("end_datetime")
        start = _parse_datetime("start_datetime", raw_start) if raw_start else None
        end = _parse_datetime("end_datetime", raw_end) if raw_end else None
        if end is None:
            end = snapshot if start is None or start <= snapshot else start + timedelta(days=1)
        if start is None:
            start = end - timedelta(days=1)
        if start > end:
            raise Problem(400, "start_datetime must not be after end_datetime.")
        if end - start > HEARTRATE_MAX_RANGE:
            raise Problem(400, "The requested range exceeds 30 days; request at most 30 days at a time.")
        return start.astimezone(UTC), end.astimezone(UTC)

    async def heartrate(self, request: Request) -> Response:
        principal = self._principal(request, "heartrate")
        latest = request.query_params.get("latest", "false").lower()
        if latest not in ("true", "false", "1", "0"):
            raise ValidationProblem("latest", "Input should be a valid boolean", "bool_parsing", latest)

        def binding(snapshot: datetime) -> str:
            start, end = self._heartrate_window(request, snapshot)
            return f"{principal.user}|heartrate|{start.isoformat()}|{end.isoformat()}|{latest}"

        offset, snapshot = self._page_start(request, binding)
        start, end = self._heartrate_window(request, snapshot)
        samples = data.heart_rate(principal.user, start, end, snapshot)
        if latest in ("true", "1"):
            samples = samples[-1:]
        size = self.state.config.page_size_for("heartrate")
        readings = self.state.faults.readings()
        page = select_fields(
            [data.heart_rate_row(principal.user, *sample) for sample in samples[offset : offset + size]],
            _selected_fields(request),
            HEARTRATE_ALWAYS_RETURNED,
        )
        more = offset + size < len(samples)
        next_token = self.tokens.issue(binding(snapshot), offset + size, snapshot) if more else None
        body: dict[str, Any] = {"data": render(page, readings.timestamps)}
        if next_token is not None or readings.last_next_token == "null":  # noqa: S105
            # Time-series answers may leave `next_token` out entirely on the last page (the spec does not
            # require it there, unlike document routes) or send it as null: the `last_next_token` reading.
            body["next_token"] = next_token
        return JSONResponse(body)

    async def personal_info(self, request: Request) -> Response:
        principal = self._principal(request, None)
        info = data.personal_info(principal.user)
        if "personal" not in principal.scopes:
            info.update(age=None, weight=None, height=None, biological_sex=None)
        if "email" not in principal.scopes:
            info["email"] = None
        return JSONResponse(info)

    def routes(self) -> list[Route]:
        return [
            Route("/v2/usercollection/personal_info", self.personal_info, methods=["GET"]),
            Route("/v2/usercollection/heartrate", self.heartrate, methods=["GET"]),
            Route("/v2/usercollection/{collection}", self.list_documents, methods=["GET"]),
            Route("/v2/usercollection/{collection}/{document_id}", self.get_document, methods=["GET"]),
        ]
