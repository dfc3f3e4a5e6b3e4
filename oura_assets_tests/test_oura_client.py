"""The Oura client over a scripted Oura (httpx.MockTransport): pagination, padding and trimming, heart-rate
windows, de-duplication, retries and their budget, the 401 refresh, and payloads that are not the envelope."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from oura_assets.domain import DOCUMENT_COLLECTIONS
from oura_assets.oura.client import (
    HEARTRATE_MAX_WINDOW,
    OuraClient,
    OuraError,
    OuraForbidden,
    OuraPayloadError,
    OuraRateLimited,
    OuraUnauthorized,
    OuraUnavailable,
    RetryPolicy,
    heartrate_windows,
    parse_instant,
)
from oura_assets.simulator import SimulatorServer

BASE = "https://api.ouraring.com"
Handler = Callable[[httpx.Request], httpx.Response]


class StaticTokens:
    """An AccessTokenSource that hands out `access-N`, bumping N on each forced refresh."""

    def __init__(self) -> None:
        self.generation = 1
        self.refreshes: list[str] = []

    def get(self) -> str:
        return f"access-{self.generation}"

    def force_refresh(self, rejected: str) -> str:
        self.refreshes.append(rejected)
        self.generation += 1
        return self.get()


class Recorder:
    """Wraps a handler and keeps every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(
    handler: Handler, *, tokens: StaticTokens | None = None, retry: RetryPolicy | None = None
) -> tuple[OuraClient, Recorder, FakeSleep]:
    recorder = Recorder(handler)
    sleep = FakeSleep()
    policy = retry or RetryPolicy(
        attempts=4, backoff_base_s=0.5, backoff_max_s=8, wait_budget_s=60, sleep=sleep
    )
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    return OuraClient(BASE, tokens or StaticTokens(), http=http, retry=policy), recorder, sleep


def doc(day: str, doc_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": doc_id or f"id-{day}", "day": day, "score": 80, **extra}


def paged(pages: list[list[Any]], *, omit_last_token: bool = False) -> Handler:
    """Serve `pages` in order, chaining them with next_token."""

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("next_token")
        index = int(token.removeprefix("page-")) if token else 0
        body: dict[str, Any] = {"data": pages[index]}
        if index + 1 < len(pages):
            body["next_token"] = f"page-{index + 1}"
        elif not omit_last_token:
            body["next_token"] = None
        return httpx.Response(200, json=body)

    return handler


def test_documents_follows_next_token_across_pages() -> None:
    pages = [[doc("2024-06-10")], [doc("2024-06-11")], [doc("2024-06-12")]]
    client, recorder, _ = make_client(paged(pages))
    batch = client.documents("daily_sleep", date(2024, 6, 10), date(2024, 6, 12))
    assert [d["day"] for d in batch.documents] == ["2024-06-10", "2024-06-11", "2024-06-12"]
    assert [r.url.params.get("next_token") for r in recorder.requests] == [None, "page-1", "page-2"]
    assert batch.rejected == []


def test_documents_pads_request_a_day_each_side_and_trims_by_day() -> None:
    pages = [[doc("2024-06-09"), doc("2024-06-10"), doc("2024-06-11"), doc("2024-06-12")]]
    client, recorder, _ = make_client(paged(pages))
    batch = client.documents("daily_readiness", date(2024, 6, 10), date(2024, 6, 11))
    params = recorder.requests[0].url.params
    assert (params["start_date"], params["end_date"]) == ("2024-06-09", "2024-06-12")
    assert recorder.requests[0].url.path == "/v2/usercollection/daily_readiness"
    assert [d["day"] for d in batch.documents] == ["2024-06-10", "2024-06-11"]


def test_documents_single_day_range_is_padded() -> None:
    client, recorder, _ = make_client(paged([[doc("2024-06-10")]]))
    batch = client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    params = recorder.requests[0].url.params
    assert (params["start_date"], params["end_date"]) == ("2024-06-09", "2024-06-11")
    assert len(batch.documents) == 1


def test_documents_deduplicated_by_id_last_wins() -> None:
    pages = [[doc("2024-06-10", "a", score=1)], [doc("2024-06-10", "a", score=2), doc("2024-06-10", "b")]]
    client, _, _ = make_client(paged(pages))
    batch = client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert {d["id"]: d["score"] for d in batch.documents} == {"a": 2, "b": 80}


def test_documents_keep_unknown_extra_fields() -> None:
    extra = doc("2024-06-10", meta={"updated_at": "2024-06-11T00:00:00Z", "version": 3}, brand_new=[1])
    client, _, _ = make_client(paged([[extra]]))
    [document] = client.documents("daily_activity", date(2024, 6, 10), date(2024, 6, 10)).documents
    assert document["meta"]["version"] == 3 and document["brand_new"] == [1]


def test_documents_without_next_token_field_stop_after_one_page() -> None:
    client, recorder, _ = make_client(paged([[doc("2024-06-10")]], omit_last_token=True))
    assert len(client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10)).documents) == 1
    assert len(recorder.requests) == 1


def test_documents_bad_documents_are_rejected_with_reason_not_fatal() -> None:
    pages = [
        [
            "just a string",
            {"day": "2024-06-10"},
            {"id": "x"},
            {"id": "y", "day": "June 10"},
            doc("2024-06-10"),
        ]
    ]
    client, _, _ = make_client(paged(pages))
    batch = client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert [d["id"] for d in batch.documents] == ["id-2024-06-10"]
    reasons = [r.reason for r in batch.rejected]
    assert len(reasons) == 4
    assert "not a JSON object" in reasons[0]
    assert "id" in reasons[1]
    assert "no `day`" in reasons[2]
    assert "unreadable `day`" in reasons[3]
    assert batch.rejected[0].document == "just a string"


def test_documents_refuses_non_document_collections() -> None:
    client, _, _ = make_client(paged([[]]))
    with pytest.raises(ValueError):
        client.documents("heartrate", date(2024, 6, 10), date(2024, 6, 10))
    with pytest.raises(ValueError):
        client.documents("../oauth", date(2024, 6, 10), date(2024, 6, 10))


def test_parse_instant_accepts_every_timestamp_shape() -> None:
    expected = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
    for text in (
        "2024-06-10T12:00:00+00:00",
        "2024-06-10T12:00:00Z",
        "2024-06-10T12:00:00.000Z",
        "2024-06-10T12:00:00.000000+00:00",
        "2024-06-10T14:00:00+02:00",
        "2024-06-10T12:00:00.000000000Z",
        "2024-06-10T12:00:00",
    ):
        assert parse_instant(text) == expected, text
    assert parse_instant("yesterday") is None
    assert parse_instant(None) is None


def test_heartrate_windows_are_at_most_30_days_and_cover_the_range() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=75, hours=3)
    windows = heartrate_windows(start, end)
    assert windows[0][0] == start and windows[-1][1] == end
    assert all(high - low <= HEARTRATE_MAX_WINDOW for low, high in windows)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert len(windows) == 3


def heartrate_server(
    samples_by_window: Callable[[datetime, datetime], list[dict[str, Any]]], page: int
) -> Handler:
    """Heart rate served by window, `page` samples per page, ranges over 30 days refused like Oura."""

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        low = datetime.fromisoformat(params["start_datetime"])
        high = datetime.fromisoformat(params["end_datetime"])
        if high - low > timedelta(days=30):
            return httpx.Response(400, json={"status": 400, "title": "range exceeds 30 days"})
        rows = samples_by_window(low, high)
        offset = int(params.get("next_token") or 0)
        body: dict[str, Any] = {"data": rows[offset : offset + page]}
        if offset + page < len(rows):
            body["next_token"] = str(offset + page)
        return httpx.Response(200, json=body)

    return handler


def hourly_samples(low: datetime, high: datetime) -> list[dict[str, Any]]:
    """Samples every hour in [low, high] inclusive, so window boundaries repeat; timestamp shapes vary."""
    rows = []
    at = low.astimezone(UTC)
    while at <= high:
        shape = at.hour % 3
        stamp = (
            at.isoformat()
            if shape == 0
            else at.strftime("%Y-%m-%dT%H:%M:%S.000Z" if shape == 1 else "%Y-%m-%dT%H:%M:%SZ")
        )
        rows.append({"timestamp": stamp, "bpm": 60, "source": "awake", "producer_timestamp": "x"})
        at += timedelta(hours=1)
    return rows


def test_heartrate_over_75_days_in_windows_every_page_deduplicated() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=75)
    client, recorder, _ = make_client(heartrate_server(hourly_samples, page=500))
    samples = client.heartrate(start, end)
    assert len(samples) == 75 * 24
    instants = [parse_instant(s["timestamp"]) for s in samples]
    assert instants == sorted(instants) and len(set(instants)) == len(instants)
    assert instants[0] == start and instants[-1] == end - timedelta(hours=1)
    assert any(r.url.params.get("next_token") for r in recorder.requests)
    assert all(r.url.params["start_datetime"].endswith("+00:00") for r in recorder.requests)


def test_heartrate_offset_plus_sign_is_percent_encoded() -> None:
    plus_two = timezone(timedelta(hours=2))
    client, recorder, _ = make_client(heartrate_server(lambda low, high: [], page=10))
    client.heartrate(datetime(2024, 6, 10, tzinfo=plus_two), datetime(2024, 6, 11, tzinfo=plus_two))
    raw_query = recorder.requests[0].url.query.decode()
    assert "start_datetime=2024-06-10T00%3A00%3A00%2B02%3A00" in raw_query
    assert "+" not in raw_query


def test_heartrate_same_instant_different_source_both_kept() -> None:
    rows = [
        {"timestamp": "2024-06-10T01:00:00+00:00", "bpm": 50, "source": "sleep"},
        {"timestamp": "2024-06-10T01:00:00.000Z", "bpm": 51, "source": "sleep"},
        {"timestamp": "2024-06-10T01:00:00Z", "bpm": 90, "source": "workout"},
        {"timestamp": "garbage", "bpm": 1, "source": "sleep"},
    ]
    client, _, _ = make_client(heartrate_server(lambda low, high: rows, page=2))
    samples = client.heartrate(datetime(2024, 6, 10, tzinfo=UTC), datetime(2024, 6, 11, tzinfo=UTC))
    assert sorted((s["source"], s["bpm"]) for s in samples) == [("sleep", 51), ("workout", 90)]


def test_heartrate_requires_aware_datetimes() -> None:
    client, _, _ = make_client(heartrate_server(lambda low, high: [], page=10))
    with pytest.raises(ValueError):
        client.heartrate(datetime(2024, 6, 10), datetime(2024, 6, 11))


def scripted(*responses: Callable[[httpx.Request], httpx.Response] | httpx.Response) -> Handler:
    """Answer with each response in turn, then keep answering with the last one."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(item):
            return item(request)
        return httpx.Response(item.status_code, headers=item.headers, content=item.content)

    return handler


OK_PAGE = httpx.Response(200, json={"data": [doc("2024-06-10")], "next_token": None})


def test_fault_429_waits_retry_after_then_succeeds() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"})
    client, recorder, sleep = make_client(scripted(limited, OK_PAGE))
    batch = client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert len(batch.documents) == 1
    assert sleep.calls == [7.0]
    assert len(recorder.requests) == 2


def test_fault_429_falls_back_to_rate_limit_reset_epoch() -> None:
    reset = str(int(time.time()) + 20)
    limited = httpx.Response(429, headers={"X-RateLimit-Reset": reset})
    client, _, sleep = make_client(scripted(limited, OK_PAGE))
    client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert sleep.calls[0] == pytest.approx(20, abs=2)


def test_fault_429_without_headers_backs_off() -> None:
    client, _, sleep = make_client(scripted(httpx.Response(429), OK_PAGE))
    client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert len(sleep.calls) == 1 and 0 <= sleep.calls[0] <= 0.5


def test_fault_429_beyond_wait_budget_raises_rate_limited_without_sleeping() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "600", "X-RateLimit-Tier": "application"})
    client, recorder, sleep = make_client(scripted(limited))
    with pytest.raises(OuraRateLimited) as caught:
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert sleep.calls == []
    assert len(recorder.requests) == 1
    assert caught.value.status == 429 and caught.value.retry_after_s == 600
    assert "wait budget" in caught.value.message and "application" in caught.value.message


def test_fault_429_budget_is_shared_across_pages() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "40"})
    page0 = httpx.Response(200, json={"data": [], "next_token": "t1"})
    # 40 s for page one fits the 60 s budget; another 40 s for page two does not.
    client, _, sleep = make_client(scripted(limited, page0, limited, OK_PAGE))
    with pytest.raises(OuraRateLimited):
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert sleep.calls == [40.0]


def test_fault_5xx_then_success_backs_off_with_jitter() -> None:
    client, recorder, sleep = make_client(scripted(httpx.Response(503), httpx.Response(502), OK_PAGE))
    assert len(client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10)).documents) == 1
    assert len(recorder.requests) == 3
    assert len(sleep.calls) == 2
    assert 0 <= sleep.calls[0] <= 0.5 and 0 <= sleep.calls[1] <= 1.0


def test_fault_5xx_forever_gives_up_after_bounded_attempts() -> None:
    client, recorder, sleep = make_client(scripted(httpx.Response(500)))
    with pytest.raises(OuraUnavailable) as caught:
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert len(recorder.requests) == 4
    assert len(sleep.calls) == 3
    assert caught.value.status == 500 and "gave up after 4 tries" in caught.value.message


def dropped(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)


def timed_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def test_fault_dropped_connection_and_timeout_are_retried() -> None:
    client, recorder, _ = make_client(scripted(dropped, timed_out, OK_PAGE))
    assert len(client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10)).documents) == 1
    assert len(recorder.requests) == 3


def test_fault_dropped_connection_forever_is_unavailable() -> None:
    client, _, _ = make_client(scripted(dropped))
    with pytest.raises(OuraUnavailable, match="RemoteProtocolError"):
        client.heartrate(datetime(2024, 6, 10, tzinfo=UTC), datetime(2024, 6, 11, tzinfo=UTC))


def test_fault_4xx_is_not_retried() -> None:
    bad = httpx.Response(422, json={"detail": [{"loc": ["query"], "msg": "bad date", "type": "value_error"}]})
    client, recorder, sleep = make_client(scripted(bad))
    with pytest.raises(OuraError) as caught:
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert type(caught.value) is OuraError and caught.value.status == 422
    assert "bad date" in caught.value.message
    assert len(recorder.requests) == 1 and sleep.calls == []


def test_fault_403_is_forbidden_and_not_retried() -> None:
    client, recorder, _ = make_client(scripted(httpx.Response(403, json={"title": "Forbidden"})))
    with pytest.raises(OuraForbidden) as caught:
        client.personal_info()
    assert caught.value.status == 403 and len(recorder.requests) == 1


def test_fault_401_refreshes_once_and_retries_with_new_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer access-1":
            return httpx.Response(401, json={"title": "expired"})
        return httpx.Response(200, json={"id": "user-1", "age": 40})

    tokens = StaticTokens()
    client, recorder, _ = make_client(handler, tokens=tokens)
    assert client.personal_info()["id"] == "user-1"
    assert tokens.refreshes == ["access-1"]
    assert [r.headers["Authorization"] for r in recorder.requests] == ["Bearer access-1", "Bearer access-2"]


def test_fault_401_twice_raises_unauthorized_after_one_refresh() -> None:
    tokens = StaticTokens()
    client, recorder, _ = make_client(scripted(httpx.Response(401)), tokens=tokens)
    with pytest.raises(OuraUnauthorized) as caught:
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert tokens.refreshes == ["access-1"] and len(recorder.requests) == 2
    assert caught.value.status == 401
    assert "access-" not in caught.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (json.dumps({"items": []}).encode(), "without `data`"),
        (json.dumps({"data": {"a": 1}}).encode(), "not a list"),
        (json.dumps([1, 2]).encode(), "not a JSON object"),
        (json.dumps({"data": [], "next_token": 5}).encode(), "next_token"),
    ],
)
def test_fault_bad_payload_raises_payload_error(body: bytes, expected: str) -> None:
    client, _, _ = make_client(scripted(httpx.Response(200, content=body)))
    with pytest.raises(OuraPayloadError, match=expected):
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))


def test_fault_repeated_next_token_stops_instead_of_looping() -> None:
    client, _, _ = make_client(scripted(httpx.Response(200, json={"data": [], "next_token": "same"})))
    with pytest.raises(OuraPayloadError, match="repeated"):
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))


def test_retry_policy_defaults_and_validation() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.wait_budget_s) == (5, 300.0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_client_logs_never_contain_the_access_token(caplog: pytest.LogCaptureFixture) -> None:
    tokens = StaticTokens()
    client, _, _ = make_client(scripted(httpx.Response(401), httpx.Response(503), OK_PAGE), tokens=tokens)
    with caplog.at_level(logging.DEBUG):
        client.documents("sleep", date(2024, 6, 10), date(2024, 6, 10))
    assert caplog.records
    assert "access-" not in caplog.text


class SimulatorTokens:
    """Tokens the simulator issued directly (no browser), refreshed through its token endpoint on 401."""

    def __init__(self, simulator: SimulatorServer, ring_user: str) -> None:
        self.token = simulator.control.issue_tokens(ring_user)["access_token"]

    def get(self) -> str:
        return self.token

    def force_refresh(self, rejected: str) -> str:
        return self.token


def sim_client(simulator: SimulatorServer, ring_user: str, **retry: Any) -> OuraClient:
    policy = RetryPolicy(**{"attempts": 8, "backoff_base_s": 0.001, "backoff_max_s": 0.01, **retry})
    return OuraClient(simulator.url, SimulatorTokens(simulator, ring_user), retry=policy)


def test_sim_documents_cover_every_day_of_the_range(simulator: SimulatorServer) -> None:
    client = sim_client(simulator, "alice")
    end = simulator.control.now().date()
    start = end - timedelta(days=29)
    for collection in DOCUMENT_COLLECTIONS:
        batch = client.documents(collection, start, end)
        days = {date.fromisoformat(d["day"]) for d in batch.documents}
        assert days and min(days) >= start and max(days) <= end, collection
        assert len({d["id"] for d in batch.documents}) == len(batch.documents)
        assert batch.rejected == []
    # The simulator reads the start as exclusive on `sleep` and every end as exclusive; padding still
    # brings back the first and last day of the range. (The first day alice's activity exists: the clock
    # follows the wall clock, and some days are not worn or worn only at night.)
    first = min(
        date.fromisoformat(d["day"]) for d in client.documents("daily_activity", start, end).documents
    )
    single = client.documents("daily_activity", first, first)
    assert [d["day"] for d in single.documents] == [first.isoformat()]
    pages = simulator.control.stats()["requests"]["GET /v2/usercollection/sleep"]["200"]
    assert pages > 1


def test_sim_fault_5xx_and_dropped_connections_give_the_same_data(simulator: SimulatorServer) -> None:
    end = simulator.control.now().date()
    start = end - timedelta(days=20)
    hr_start = datetime.combine(end - timedelta(days=5), datetime.min.time(), tzinfo=UTC)
    hr_end = hr_start + timedelta(days=5)
    clean_client = sim_client(simulator, "dana")
    clean = {c: clean_client.documents(c, start, end).documents for c in DOCUMENT_COLLECTIONS}
    clean_hr = clean_client.heartrate(hr_start, hr_end)
    simulator.control.set_faults(error_rate=0.3, drop_rate=0.3)
    faulty = sim_client(simulator, "dana", attempts=20)
    for collection in DOCUMENT_COLLECTIONS:
        got = faulty.documents(collection, start, end).documents
        assert sorted(d["id"] for d in got) == sorted(d["id"] for d in clean[collection])
    assert faulty.heartrate(hr_start, hr_end) == clean_hr
    stats = simulator.control.stats()
    assert stats["injected_errors"] > 0 and stats["dropped"] > 0


def test_sim_heartrate_over_60_days_in_30_day_windows(simulator: SimulatorServer) -> None:
    end_day = simulator.control.now().date()
    start = datetime.combine(end_day - timedelta(days=60), datetime.min.time(), tzinfo=UTC)
    end = start + timedelta(days=60)
    samples = sim_client(simulator, "erin").heartrate(start, end)
    instants = [parse_instant(s["timestamp"]) for s in samples]
    assert len(samples) > 1000
    assert all(i is not None and start <= i < end for i in instants)
    assert len({(i, s["source"]) for i, s in zip(instants, samples, strict=True)}) == len(samples)
    statuses = simulator.control.stats()["requests"]["GET /v2/usercollection/heartrate"]
    assert set(statuses) == {"200"}


def test_sim_fault_rate_limit_waits_retry_after(simulator: SimulatorServer) -> None:
    waits: list[float] = []
    # One request per window: any two pages fetched within a window collide, however slow a loaded machine
    # makes each request (two per 50 ms let a busy machine slip between windows and never see a 429).
    window_s = 0.25

    def sleep(seconds: float) -> None:
        # Record what the client chose to wait, but only wait out the simulator's window (fixed, aligned to
        # the epoch).
        waits.append(seconds)
        time.sleep(window_s - time.time() % window_s + 0.01)

    simulator.control.set_faults(rate_limit={"limit": 1, "window_s": window_s})
    client = sim_client(simulator, "fred", wait_budget_s=600, sleep=sleep)
    end = simulator.control.now().date()
    batch = client.documents("sleep", end - timedelta(days=29), end)
    assert batch.documents
    # The simulator's Retry-After is whole seconds (at least 1): waits are its value, not the tiny backoff.
    assert waits and all(w == 1.0 for w in waits)
    assert simulator.control.stats()["rate_limited"] == len(waits)


def test_sim_fault_rate_limit_beyond_budget_is_rate_limited(simulator: SimulatorServer) -> None:
    waits: list[float] = []
    simulator.control.set_faults(rate_limit={"limit": 1, "window_s": 3600})
    client = sim_client(simulator, "gina", wait_budget_s=0.5, sleep=waits.append)
    client.personal_info()
    with pytest.raises(OuraRateLimited) as caught:
        client.personal_info()
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
    assert waits == []


def test_sim_fault_forbidden_user_is_forbidden(simulator: SimulatorServer) -> None:
    simulator.control.set_user_faults("hank", forbidden=True)
    client = sim_client(simulator, "hank")
    with pytest.raises(OuraForbidden):
        client.documents("daily_sleep", date(2024, 6, 10), date(2024, 6, 10))
