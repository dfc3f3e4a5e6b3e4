"""Oura API v2 client: every page, every window, and Oura's ambiguities absorbed in one place.

Oura's date-range semantics are reported inconsistently, pages must be followed to the end, heart rate only
answers windows of up to 30 days, and 429/5xx/dropped connections happen. Callers ask for an inclusive day
range (or a half-open instant range for heart rate) and get exactly that back, de-duplicated, or a typed
`OuraError` whose message is safe to log and show (never a token).

Quirks handled here are listed in `../shared/reference/OURA-NOTES.md`; each is named where it is handled.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import httpx
import tenacity

from oura_assets.clock import as_utc, utc_now
from oura_assets.oura import heartrate_pages
from oura_assets.oura.heartrate_pages import HeartRateColumns
from oura_assets.oura.rate_budget import RateBudget
from oura_assets.tls import tls_context

log = logging.getLogger(__name__)

USERCOLLECTION = "/v2/usercollection"

# Heart-rate ranges over 30 days are reported to fail (wearipedia #162, open-wearables #889, the Home
# Assistant integration batches in 30-day chunks). Each request spans at most exactly 30 days; consecutive
# windows share their boundary instant so nothing is lost whether Oura reads the end as inclusive or not,
# and the repeated boundary samples are removed by the de-duplication.
HEARTRATE_MAX_WINDOW = timedelta(days=30)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

_COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOCUMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_FRACTION = re.compile(r"\.(\d+)")


class OuraError(Exception):
    """Oura did not give us what we asked for. `message` is safe to log and to show: never a token."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class OuraUnauthorized(OuraError):
    """401 that survived one token refresh."""


class OuraForbidden(OuraError):
    """403: a scope the patient did not grant, or an expired Oura membership [spec]. Not retried."""


class OuraRateLimited(OuraError):
    """429 beyond the retry wait budget."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class OuraUnavailable(OuraError):
    """5xx, timeouts or dropped connections that outlasted the bounded retries."""


class OuraPayloadError(OuraError):
    """A response that is not the documented envelope (not JSON, no `data` list, bad `next_token`)."""


class AccessTokenSource(Protocol):
    """Where the client gets a patient's access token (`oura_assets.tokens.PatientTokens` in production)."""

    def get(self) -> str:
        """A valid access token."""
        ...

    def force_refresh(self, rejected: str) -> str:
        """Called once when Oura answered 401 to `rejected`; returns a newer token."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request before giving up. Tests shrink the waits or inject `sleep`.

    `attempts` bounds tries for 5xx, timeouts and dropped connections (backoff: exponential with full jitter,
    `backoff_base_s * 2**n` capped at `backoff_max_s`). 429s are bounded by `rate_limit_attempts` and,
    together with every other wait, by `wait_budget_s`: the total time one client call (all its pages) may
    spend sleeping before it gives up with `OuraRateLimited` / `OuraUnavailable`.
    """

    attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    wait_budget_s: float = 300.0
    rate_limit_attempts: int = 10
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.rate_limit_attempts < 1:
            raise ValueError("RetryPolicy attempts must be at least 1")
        if min(self.backoff_base_s, self.backoff_max_s, self.wait_budget_s) < 0:
            raise ValueError("RetryPolicy waits must not be negative")


@dataclass(frozen=True)
class RejectedDocument:
    """A document Oura sent that we could not key (not an object, no usable `id` or `day`)."""

    reason: str
    document: Any


@dataclass
class DocumentBatch:
    documents: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[RejectedDocument] = field(default_factory=list)


class _WaitBudget:
    """Seconds one client call may still sleep across all its requests."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.spent_s = 0.0

    def allows(self, seconds: float) -> bool:
        return self.spent_s + seconds <= self.total_s


def parse_instant(value: Any) -> datetime | None:
    """An Oura timestamp as an aware UTC datetime, or None when it is not one.

    Heart-rate `timestamp` comes as `+00:00` or `.000Z` [spec], other documents carry local offsets; Oura's
    framework (FastAPI on pydantic) also reads and may write a space separator and `±HHMM` offsets. Python
    3.11's `fromisoformat` reads all of those. Fractions beyond microseconds are cut to six digits, and a
    timestamp without an offset is read as UTC, which is what Oura documents for heart rate.
    """
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6], value, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return as_utc(parsed)


def heartrate_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Consecutive request windows covering [start, end), each at most `HEARTRATE_MAX_WINDOW` long."""
    windows = []
    low = start
    while low < end:
        high = min(low + HEARTRATE_MAX_WINDOW, end)
        windows.append((low, high))
        low = high
    return windows


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds to wait after a 429: `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset` [spec].

    A few lines of our own: tenacity waits on what we tell it and reads no headers.
    """
    raw = response.headers.get("Retry-After", "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, (as_utc(when) - utc_now()).total_seconds())
    reset = response.headers.get("X-RateLimit-Reset", "").strip()
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None


def _error_detail(response: httpx.Response) -> str:
    """A short human summary of an error body: RFC 7807 `title`/`detail`, or 422 `detail[].msg` [spec]."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail")
    if isinstance(detail, list):
        messages = [str(item.get("msg")) for item in detail if isinstance(item, dict) and item.get("msg")]
        text = "; ".join(messages)
    else:
        text = " - ".join(str(part) for part in (body.get("title"), detail) if part)
    return text[:200]


def _is_retryable_transport_error(exc: httpx.HTTPError) -> bool:
    # RemoteProtocolError is what a connection dropped mid-response looks like; UnsupportedProtocol and
    # LocalProtocolError are our bugs and would fail the same way again.
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


class OuraClient:
    """One patient's view of Oura API v2.

    `http` may be shared between clients (a run's connection pool); when it is not given the client makes its
    own with explicit timeouts and `close()` closes it. `budget`, when given, is the application's host-wide
    request budget (`rate_budget.RateBudget`): every attempt waits its turn there and reports the answer back.
    """

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokenSource,
        *,
        http: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        budget: RateBudget | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._budget = budget
        self._tokens = tokens
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=DEFAULT_TIMEOUT, verify=tls_context())
        self._retry = retry if retry is not None else RetryPolicy()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> OuraClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def personal_info(self) -> dict[str, Any]:
        """The patient's `personal_info` document (its `id` is readable with any scope [spec])."""
        path = f"{USERCOLLECTION}/personal_info"
        body = self._get_json(path, {}, _WaitBudget(self._retry.wait_budget_s))
        if not isinstance(body, dict):
            raise OuraPayloadError(f"GET {path} answered {type(body).__name__}, not a JSON object")
        return body

    def document(self, collection: str, document_id: str) -> dict[str, Any] | None:
        """One document by id (`GET /v2/usercollection/{collection}/{document_id}`), or None when Oura answers
        404: right after its webhook event a document may not be served yet (integrators report 404s for
        ids that an event had just announced), so the caller falls back on the day's range fetch."""
        if not _COLLECTION_NAME.match(collection) or collection in {"heartrate", "personal_info"}:
            raise ValueError(f"{collection!r} is not a document collection")
        if not _DOCUMENT_ID.match(document_id):
            raise ValueError("not an Oura document id")
        path = f"{USERCOLLECTION}/{collection}/{document_id}"
        try:
            body = self._get_json(path, {}, _WaitBudget(self._retry.wait_budget_s))
        except OuraError as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(body, dict):
            raise OuraPayloadError(f"GET {path} answered {type(body).__name__}, not a JSON object")
        return body

    def documents(self, collection: str, start: date, end: date) -> DocumentBatch:
        """Documents of `collection` whose `day` is in [start, end], one per `id` (the last one seen wins)."""
        if not _COLLECTION_NAME.match(collection) or collection in {"heartrate", "personal_info"}:
            raise ValueError(f"{collection!r} is not a document collection")
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        path = f"{USERCOLLECTION}/{collection}"
        # Date-range semantics are reported inconsistently: start = end returned nothing on `sleep`
        # (oura-custom-component #26), the start behaved as exclusive (open-wearables #1007), a date-only end
        # was read as midnight (open-wearables #1161). Ask for a day more on each side, date-only, and keep
        # what we wanted by `day` ourselves.
        params = {
            "start_date": (start - timedelta(days=1)).isoformat(),
            "end_date": (end + timedelta(days=1)).isoformat(),
        }
        by_id: dict[str, dict[str, Any]] = {}
        rejected: list[RejectedDocument] = []
        pages = 0
        for page in self._pages(path, params, _WaitBudget(self._retry.wait_budget_s)):
            pages += 1
            for document in page:
                reason, day = _document_key_problem(document)
                if reason is not None:
                    rejected.append(RejectedDocument(reason, document))
                elif day is not None and start <= day <= end:
                    by_id[document["id"]] = document
        if rejected:
            log.warning("Oura %s %s..%s: %d documents rejected", collection, start, end, len(rejected))
        log.info("Oura %s %s..%s: %d documents over %d pages", collection, start, end, len(by_id), pages)
        return DocumentBatch(documents=list(by_id.values()), rejected=rejected)

    def heartrate(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Heart-rate samples with `timestamp` in [start, end), oldest first, one per (instant, source).

        As Python dicts: `heartrate_columns` is what the sync uses.
        """
        columns = self.heartrate_columns(start, end)
        table = columns.table.sort_by([("timestamp", "ascending"), ("source", "ascending")])
        return [json.loads(document) for document in table.column("document").to_pylist()]

    def heartrate_columns(self, start: datetime, end: datetime) -> HeartRateColumns:
        """Heart-rate samples with `timestamp` in [start, end), one per (instant, source), as columns.

        The pages stay the bytes Oura sent until DuckDB parses them all at once (`heartrate_pages`).
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("heartrate start and end must be timezone-aware datetimes")
        path = f"{USERCOLLECTION}/heartrate"
        budget = _WaitBudget(self._retry.wait_budget_s)
        pages: list[bytes] = []
        windows = heartrate_windows(start, end)
        for window_start, window_end in windows:
            # Date-only parameters are ignored on this route (hedgertronic/oura-ring #3): full ISO date-times
            # with offset. httpx percent-encodes the offset's `+` as %2B, which Oura requires [spec].
            params = {"start_datetime": window_start.isoformat(), "end_datetime": window_end.isoformat()}
            pages.extend(self._raw_pages(path, params, budget))
        # Boundary samples repeat across windows and pages (open-wearables #889): the parse keeps one.
        try:
            columns = heartrate_pages.parse_pages(pages, start.astimezone(UTC), end.astimezone(UTC), path)
        except heartrate_pages.PageError as exc:
            raise OuraPayloadError(str(exc)) from None
        if columns.unreadable:
            log.warning("Oura heartrate: skipped %d samples without a readable timestamp", columns.unreadable)
        log.info("Oura heartrate %s..%s: %d samples over %d windows", start, end, len(columns), len(windows))
        return columns

    def _raw_pages(self, path: str, params: Mapping[str, str], budget: _WaitBudget) -> Iterator[bytes]:
        """Every page's body as Oura sent it, following `next_token` (read from the page's end) to the end."""
        seen: set[str] = set()
        next_token: str | None = None
        while True:
            query = dict(params)
            if next_token:
                query["next_token"] = next_token
            response = self._get(path, query, budget)
            body = response.content
            try:
                next_token = heartrate_pages.next_token_of(body, path)
            except heartrate_pages.PageError as exc:
                raise OuraPayloadError(str(exc), status=response.status_code) from None
            yield body
            if not next_token:
                return
            if next_token in seen:
                raise OuraPayloadError(
                    f"GET {path} repeated a `next_token`; stopped to avoid an endless loop"
                )
            seen.add(next_token)

    def _pages(self, path: str, params: Mapping[str, str], budget: _WaitBudget) -> Iterator[list[Any]]:
        """Every page's `data`, following `next_token` until it is absent, null or empty."""
        seen: set[str] = set()
        next_token: str | None = None
        while True:
            query = dict(params)
            if next_token:
                query["next_token"] = next_token
            body = self._get_json(path, query, budget)
            if not isinstance(body, dict):
                raise OuraPayloadError(f"GET {path} answered {type(body).__name__}, not a JSON object")
            if "data" not in body:
                raise OuraPayloadError(f"GET {path} answered an object without `data`")
            data = body["data"]
            if not isinstance(data, list):
                raise OuraPayloadError(f"GET {path} answered `data` as {type(data).__name__}, not a list")
            yield data
            # Document routes always send `next_token` (maybe null); time series may leave it out [spec].
            next_token = body.get("next_token")
            if next_token is not None and not isinstance(next_token, str):
                raise OuraPayloadError(f"GET {path} answered a `next_token` that is not a string")
            if not next_token:
                return
            if next_token in seen:
                raise OuraPayloadError(
                    f"GET {path} repeated a `next_token`; stopped to avoid an endless loop"
                )
            seen.add(next_token)

    def _get_json(self, path: str, params: Mapping[str, str], budget: _WaitBudget) -> Any:
        response = self._get(path, params, budget)
        try:
            return response.json()
        except ValueError:
            raise OuraPayloadError(
                f"GET {path} answered {response.status_code} with a body that is not JSON",
                status=response.status_code,
            ) from None

    def _get(self, path: str, params: Mapping[str, str], budget: _WaitBudget) -> httpx.Response:
        """A 2xx answer to GET `path`, refreshing the access token once on a 401."""
        token = self._tokens.get()
        response = self._send(path, params, token, budget)
        if response.status_code == 401:
            log.info("Oura answered 401 on GET %s; refreshing the access token once", path)
            token = self._tokens.force_refresh(token)
            response = self._send(path, params, token, budget)
            if response.status_code == 401:
                raise OuraUnauthorized(
                    f"Oura answered 401 on GET {path} again after the access token was refreshed", status=401
                )
        return response

    def _send(self, path: str, params: Mapping[str, str], token: str, budget: _WaitBudget) -> httpx.Response:
        """One request with retries; returns a 2xx or 401 response, raises `OuraError` for the rest.

        tenacity drives the loop: its `wait_random_exponential` is the full-jitter backoff we want and it lets
        tests inject `sleep` (stamina, tenacity's friendlier wrapper, exposes neither, so it is not used).
        """
        policy = self._retry
        counts = {"transient": 0, "rate_limited": 0}
        backoff = tenacity.wait_random_exponential(multiplier=policy.backoff_base_s, max=policy.backoff_max_s)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, OuraRateLimited) and exc.retry_after_s is not None:
                return exc.retry_after_s
            return backoff(state)

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, OuraRateLimited):
                counts["rate_limited"] += 1
                exhausted = counts["rate_limited"] >= policy.rate_limit_attempts
            else:
                counts["transient"] += 1
                exhausted = counts["transient"] >= policy.attempts
            return exhausted or not budget.allows(state.upcoming_sleep)

        def sleep(seconds: float) -> None:
            budget.spent_s += seconds
            policy.sleep(seconds)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "Oura %s; retrying in %.2f s (attempt %d)",
                exc,
                state.upcoming_sleep,
                state.attempt_number + 1,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((OuraUnavailable, OuraRateLimited)),
            wait=wait,
            stop=stop,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, path, params, token)
        except OuraRateLimited as exc:
            raise OuraRateLimited(
                f"{exc.message}; gave up after {counts['rate_limited']} tries "
                f"within the {policy.wait_budget_s:g} s wait budget",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except OuraUnavailable as exc:
            raise OuraUnavailable(
                f"{exc.message}; gave up after {counts['transient'] + counts['rate_limited']} tries",
                status=exc.status,
            ) from exc

    def _attempt(self, path: str, params: Mapping[str, str], token: str) -> httpx.Response:
        if self._budget is not None:
            self._budget.acquire()
        began = time.monotonic()
        try:
            response = self._http.get(
                self._base_url + path,
                params=dict(params),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            if _is_retryable_transport_error(exc):
                raise OuraUnavailable(f"GET {path} failed: {type(exc).__name__}") from exc
            raise OuraError(f"GET {path} failed: {type(exc).__name__}") from exc
        status = response.status_code
        if self._budget is not None:
            # The budget learns the limit and any pause from Oura's headers, and the latency it paces for.
            self._budget.observe(status, response.headers, time.monotonic() - began)
        if status < 300 or status == 401:
            return response
        if status == 429:
            retry_after = _retry_after_s(response)
            tier = response.headers.get("X-RateLimit-Tier")
            tier_text = f" ({tier} tier)" if tier else ""
            raise OuraRateLimited(f"GET {path} was rate limited (429){tier_text}", retry_after_s=retry_after)
        if status >= 500:
            raise OuraUnavailable(f"GET {path} answered {status}", status=status)
        detail = _error_detail(response)
        suffix = f": {detail}" if detail else ""
        if status == 403:
            raise OuraForbidden(
                f"GET {path} answered 403 (scope not granted or Oura membership expired){suffix}", status=403
            )
        raise OuraError(f"GET {path} answered {status}{suffix}", status=status)


def _document_key_problem(document: Any) -> tuple[str | None, date | None]:
    """(why the document cannot be kept, its day). Unknown extra fields are fine: parse leniently [notes]."""
    if not isinstance(document, dict):
        return f"not a JSON object ({type(document).__name__})", None
    doc_id = document.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        return "missing or empty `id`", None
    raw_day = document.get("day")
    if not isinstance(raw_day, str):
        return f"document {doc_id} has no `day`", None
    try:
        return None, date.fromisoformat(raw_day)
    except ValueError:
        return f"document {doc_id} has an unreadable `day` {raw_day[:32]!r}", None
