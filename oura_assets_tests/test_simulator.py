"""The Oura simulator over real HTTP: OAuth grants, Oura's date and paging semantics, errors, fault knobs,
and the determinism other tests rely on."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from oura_assets.config import DEMO_CLIENT_ID, load_settings
from oura_assets.simulator import (
    DEFAULT_PAGE_SIZES,
    ClientRegistration,
    RateLimit,
    SimulatorConfig,
    SimulatorServer,
)
from oura_assets.simulator import data as simdata

CLIENT_ID = "sim-test-client"
SECRET = "sim-test-secret"
REDIRECT = "http://127.0.0.1:9/callback/oura"
CLOCK = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)
DOCUMENT_ROUTES = ("daily_readiness", "daily_sleep", "sleep", "daily_activity", "workout", "session")


def make_config(**overrides: Any) -> SimulatorConfig:
    return SimulatorConfig(
        clients={CLIENT_ID: ClientRegistration(SECRET, (REDIRECT,))}, now=CLOCK, **overrides
    )


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(make_config()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(server: SimulatorServer) -> Iterator[None]:
    server.control.reset()
    server.control.set_clock(CLOCK, frozen=True)
    yield
    server.control.reset()
    server.control.set_clock(CLOCK, frozen=True)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def authorize(server: SimulatorServer, http: httpx.Client, user: str, **params: str) -> httpx.Response:
    query = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code", "state": "st8"}
    query.update(params)
    if user:
        query["sim_user"] = user
    return http.get(server.url + "/oauth/authorize", params=query)


def code_from(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["state"] == ["st8"]
    return query["code"][0]


def token_request(
    server: SimulatorServer, http: httpx.Client, secret: str = SECRET, **form: str
) -> httpx.Response:
    return http.post(
        server.url + "/oauth/token", data={"client_id": CLIENT_ID, "client_secret": secret, **form}
    )


def connect(
    server: SimulatorServer, http: httpx.Client, user: str, scope: str | None = None
) -> dict[str, Any]:
    code = code_from(authorize(server, http, user, **({"scope": scope} if scope else {})))
    answer = token_request(server, http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


def get(server: SimulatorServer, http: httpx.Client, route: str, token: Any, **params: str) -> httpx.Response:
    return http.get(f"{server.url}/v2/usercollection/{route}", params=params, headers=bearer(token))


def all_pages(
    server: SimulatorServer, http: httpx.Client, route: str, token: Any, **params: str
) -> list[Any]:
    out: list[Any] = []
    pages = 0
    while True:
        response = get(server, http, route, token, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["data"])
        pages += 1
        if not body.get("next_token"):
            return out
        params["next_token"] = body["next_token"]
        assert pages < 500


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# OAuth


def test_code_flow_issues_a_bearer_pair_that_reads_data(server, http):
    tokens = connect(server, http, "alice", scope="email personal daily heartrate")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 86400
    assert tokens["scope"] == "email personal daily heartrate"
    assert len(tokens["access_token"]) >= 32 and tokens["access_token"] != tokens["refresh_token"]
    info = get(server, http, "personal_info", tokens)
    assert info.status_code == 200
    assert info.json()["id"] == simdata.personal_info("alice")["id"]
    assert info.json()["email"]


def test_client_credentials_by_http_basic(server, http):
    code = code_from(authorize(server, http, "alice"))
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    answer = http.post(
        server.url + "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("how", ["body", "basic"])
def test_wrong_client_secret_is_invalid_client_401(server, http, how):
    code = code_from(authorize(server, http, "alice"))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if how == "body":
        answer = token_request(server, http, secret="nope", **form)
    else:
        basic = base64.b64encode(f"{CLIENT_ID}:nope".encode()).decode()
        answer = http.post(
            server.url + "/oauth/token", data=form, headers={"Authorization": f"Basic {basic}"}
        )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_authorize_refuses_unknown_client_and_inexact_redirect_without_redirecting(server, http):
    unknown = authorize(server, http, "alice", client_id="someone-else")
    inexact = authorize(server, http, "alice", redirect_uri=REDIRECT + "/")
    for response in (unknown, inexact):
        assert response.status_code == 400
        assert "location" not in response.headers


def test_authorize_sim_deny_redirects_access_denied_with_state(server, http):
    response = authorize(server, http, "", sim_deny="1")
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query == {"error": ["access_denied"], "state": ["st8"]}


def test_authorize_rejects_wrong_response_type_and_unknown_scope(server, http):
    wrong_type = parse_qs(
        urlsplit(authorize(server, http, "a", response_type="token").headers["location"]).query
    )
    assert wrong_type["error"] == ["unsupported_response_type"]
    bad_scope = parse_qs(
        urlsplit(authorize(server, http, "a", scope="daily telepathy").headers["location"]).query
    )
    assert bad_scope["error"] == ["invalid_scope"]


def test_scopes_may_be_plus_separated(server, http):
    url = (
        f"{server.url}/oauth/authorize?client_id={CLIENT_ID}&redirect_uri={REDIRECT}&response_type=code"
        "&state=st8&sim_user=alice&scope=daily%2Bheartrate"
    )
    code = code_from(http.get(url))
    tokens = token_request(
        server, http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT
    ).json()
    assert tokens["scope"] == "daily heartrate"


def test_consent_page_posts_back_allow_and_deny(server, http):
    page = authorize(server, http, "", scope="daily")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "name='username'" in page.text and "value='allow'" in page.text and "value='deny'" in page.text
    form = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "daily",
        "state": "st8",
    }
    allowed = http.post(
        server.url + "/oauth/authorize", data={**form, "username": "carol", "decision": "allow"}
    )
    code = code_from(allowed)
    tokens = token_request(
        server, http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT
    ).json()
    assert get(server, http, "personal_info", tokens).json()["id"] == simdata.personal_info("carol")["id"]
    denied = http.post(
        server.url + "/oauth/authorize", data={**form, "username": "carol", "decision": "deny"}
    )
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]
    empty = http.post(server.url + "/oauth/authorize", data={**form, "username": "", "decision": "allow"})
    assert empty.status_code == 400 and "location" not in empty.headers


def test_code_reuse_is_rejected_and_revokes_what_it_granted(server, http):
    code = code_from(authorize(server, http, "alice"))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    first = token_request(server, http, **form)
    assert first.status_code == 200
    again = token_request(server, http, **form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert_problem(get(server, http, "personal_info", first.json()), 401)


def test_code_is_bound_to_its_redirect_uri_and_expires_after_ten_minutes(server, http):
    code = code_from(authorize(server, http, "alice"))
    mismatch = token_request(
        server, http, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "x"
    )
    assert mismatch.json()["error"] == "invalid_grant"
    late = code_from(authorize(server, http, "alice"))
    server.control.advance_auth_clock(601)
    expired = token_request(server, http, grant_type="authorization_code", code=late, redirect_uri=REDIRECT)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"


def test_refresh_rotates_and_a_spent_refresh_token_is_invalid_grant(server, http):
    tokens = connect(server, http, "alice")
    before = server.control.stats()
    rotated = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["access_token"] != tokens["access_token"] and new["refresh_token"] != tokens["refresh_token"]
    assert_problem(get(server, http, "personal_info", tokens), 401)
    assert get(server, http, "personal_info", new).status_code == 200
    spent = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert spent.status_code == 400 and spent.json() == {
        "error": "invalid_grant",
        "error_description": spent.json()["error_description"],
    }
    after = server.control.stats()
    assert after["refresh_grants"] == before["refresh_grants"] + 1
    assert after["spent_refresh_reuse"] == before["spent_refresh_reuse"] + 1


def test_parallel_refreshes_of_one_token_rotate_exactly_once(server, http):
    tokens = connect(server, http, "alice")
    results: list[int] = []

    def spend() -> None:
        with httpx.Client(timeout=10) as own:
            response = own.post(
                server.url + "/oauth/token",
                data={
                    "client_id": CLIENT_ID,
                    "client_secret": SECRET,
                    "grant_type": "refresh_token",
                    "refresh_token": tokens["refresh_token"],
                },
            )
            results.append(response.status_code)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] + [400] * 7


@pytest.mark.parametrize("as_form", [False, True])
def test_revoke_kills_the_grants_tokens(server, http, as_form):
    tokens = connect(server, http, "alice")
    if as_form:
        revoked = http.post(server.url + "/oauth/revoke", data={"access_token": tokens["access_token"]})
    else:
        revoked = http.post(server.url + "/oauth/revoke", params={"access_token": tokens["access_token"]})
    assert revoked.status_code == 200
    assert_problem(get(server, http, "personal_info", tokens), 401)
    refresh = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"


def test_revoking_a_rotated_away_token_leaves_the_newer_tokens_valid(server, http):
    """Strict reading: only a live token revokes its grant, so a client must revoke the pair it now holds."""
    tokens = connect(server, http, "alice")
    rotated = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    new = rotated.json()
    revoked = http.post(server.url + "/oauth/revoke", params={"access_token": tokens["access_token"]})
    assert revoked.status_code == 200
    assert get(server, http, "personal_info", new).status_code == 200
    http.post(server.url + "/oauth/revoke", params={"access_token": new["access_token"]})
    assert_problem(get(server, http, "personal_info", new), 401)


@pytest.mark.parametrize("parameter", ["token", "access_token"])
def test_revoking_with_the_refresh_token_revokes_the_grant(server, http, parameter):
    """RFC 7009 §2.1: revoking a refresh token revokes the grant, its access token included (was a 500)."""
    tokens = connect(server, http, "alice")
    revoked = http.post(server.url + "/oauth/revoke", params={parameter: tokens["refresh_token"]})
    assert revoked.status_code == 200, revoked.text
    assert_problem(get(server, http, "personal_info", tokens), 401)
    refresh = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refresh.json()["error"] == "invalid_grant"


def test_revoking_a_spent_refresh_token_leaves_the_newer_pair_valid(server, http):
    tokens = connect(server, http, "alice")
    new = token_request(
        server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    ).json()
    revoked = http.post(server.url + "/oauth/revoke", params={"token": tokens["refresh_token"]})
    assert revoked.status_code == 200, revoked.text
    assert get(server, http, "personal_info", new).status_code == 200
    http.post(server.url + "/oauth/revoke", data={"token": new["refresh_token"]})
    assert_problem(get(server, http, "personal_info", new), 401)


def test_access_tokens_expire_after_their_ttl(server, http):
    tokens = connect(server, http, "alice")
    server.control.advance_auth_clock(86400 + 1)
    assert_problem(get(server, http, "personal_info", tokens), 401)


# Auth, scopes and limits on the data routes


def test_401_for_missing_malformed_and_unknown_tokens(server, http):
    url = server.url + "/v2/usercollection/daily_sleep"
    for headers in ({}, {"Authorization": "Token abc"}, {"Authorization": "Bearer not-a-token"}):
        response = http.get(url, headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_403_without_the_routes_scope_and_personal_fields_hidden(server, http):
    tokens = server.control.issue_tokens("alice", scopes=("daily",))
    assert "heartrate" in assert_problem(get(server, http, "heartrate", tokens), 403)["detail"]
    assert_problem(get(server, http, "workout", tokens), 403)
    assert get(server, http, "daily_sleep", tokens).status_code == 200
    info = get(server, http, "personal_info", tokens).json()
    assert info["id"] and info["email"] is None and info["age"] is None


def test_fault_forbidden_user_gets_403_membership_expired(server, http):
    tokens = server.control.issue_tokens("expired-member")
    server.control.set_faults(users={"expired-member": {"forbidden": True}})
    assert "membership" in assert_problem(get(server, http, "daily_readiness", tokens), 403)["detail"]
    other = server.control.issue_tokens("still-member")
    assert get(server, http, "daily_readiness", other).status_code == 200


@pytest.mark.parametrize("tier", ["application", "access_token"])
def test_fault_rate_limit_answers_429_with_retry_headers(server, http, tier):
    tokens = server.control.issue_tokens("alice")
    server.control.set_faults(rate_limit={"limit": 3, "window_s": 60, "tier": tier})
    statuses = [get(server, http, "daily_sleep", tokens).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = get(server, http, "daily_sleep", tokens)
    assert_problem(limited, 429)
    headers = limited.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit"] == "3" and headers["x-ratelimit-window"] == "60"
    assert time.time() < int(headers["x-ratelimit-reset"]) <= time.time() + 61
    assert headers["x-ratelimit-tier"] == tier
    fresh = get(server, http, "daily_sleep", server.control.issue_tokens("alice"))
    assert fresh.status_code == (429 if tier == "application" else 200)


def test_app_rate_limit_from_config_counts_every_token_of_the_app():
    with SimulatorServer(make_config(app_rate_limit=RateLimit(2, 300))) as small, httpx.Client() as http:
        one, two = small.control.issue_tokens("a"), small.control.issue_tokens("b")
        codes = [get(small, http, "daily_sleep", token).status_code for token in (one, two, one)]
        assert codes == [200, 200, 429]


# Document routes: dates, paging, single documents


def test_pagination_returns_every_document_once_and_matches_day_by_day_requests(server, http):
    tokens = server.control.issue_tokens("alice")
    for route in DOCUMENT_ROUTES:
        paged = all_pages(server, http, route, tokens, start_date="2024-04-01", end_date="2024-06-01")
        ids = [doc["id"] for doc in paged]
        assert len(ids) == len(set(ids)), route
        by_day: list[str] = []
        for offset in range(1 if route == "sleep" else 0, 61):
            day = date(2024, 4, 1) + timedelta(days=offset)
            # sleep treats start_date as exclusive: the window for one day starts the day before.
            start = day - timedelta(days=1) if route == "sleep" else day
            by_day += [
                doc["id"]
                for doc in all_pages(
                    server,
                    http,
                    route,
                    tokens,
                    start_date=start.isoformat(),
                    end_date=str(day + timedelta(days=1)),
                )
            ]
        expected_first = "2024-04-02" if route == "sleep" else "2024-04-01"
        assert sorted(ids) == sorted(by_day), route
        assert all(expected_first <= doc["day"] < "2024-06-01" for doc in paged), route
        if route in ("daily_readiness", "sleep", "daily_activity"):
            assert len(paged) > DEFAULT_PAGE_SIZES[route], f"{route} did not need a second page"


def test_end_date_is_exclusive_and_sleep_start_date_is_exclusive_too(server, http):
    tokens = server.control.issue_tokens("alice")
    worn = [
        d["day"]
        for d in all_pages(server, http, "sleep", tokens, start_date="2024-05-01", end_date="2024-06-01")
    ]
    day = date.fromisoformat(next(d for d in worn if str(date.fromisoformat(d) + timedelta(days=1)) in worn))
    after = day + timedelta(days=1)
    same = all_pages(server, http, "daily_readiness", tokens, start_date=str(day), end_date=str(day))
    one = all_pages(server, http, "daily_readiness", tokens, start_date=str(day), end_date=str(after))
    assert same == [] and [d["day"] for d in one] == [str(day)]
    sleep = all_pages(
        server, http, "sleep", tokens, start_date=str(day), end_date=str(after + timedelta(days=1))
    )
    assert {d["day"] for d in sleep} == {str(after)}
    midday = all_pages(
        server, http, "daily_readiness", tokens, start_date=str(day), end_date=f"{after}T12:00:00"
    )
    assert [d["day"] for d in midday] == [str(day), str(after)]


def test_missing_dates_default_to_yesterday_by_the_data_clock(server, http):
    tokens = server.control.issue_tokens("alice")
    server.control.set_clock(datetime(2024, 6, 25, 20, tzinfo=UTC), frozen=True)
    docs = all_pages(server, http, "daily_activity", tokens)
    local_today = datetime(2024, 6, 25, 20, tzinfo=UTC).astimezone(simdata.profile("alice").zone).date()
    assert {d["day"] for d in docs} <= {str(local_today - timedelta(days=1))}
    assert docs, "alice wore the ring that day; the default window should have found it"


@pytest.mark.parametrize("bad", ["2024-13-01", "20240610", "yesterday", "2024-06-10T00:00:00 02:00"])
def test_malformed_dates_answer_422_naming_the_parameter(server, http, bad):
    response = get(server, http, "daily_sleep", server.control.issue_tokens("alice"), start_date=bad)
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "start_date"] and item["msg"] and item["type"]


def test_start_after_end_is_400(server, http):
    response = get(
        server,
        http,
        "daily_sleep",
        server.control.issue_tokens("a"),
        start_date="2024-06-10",
        end_date="2024-06-01",
    )
    assert_problem(response, 400)


def test_next_token_replayed_with_other_parameters_or_garbled_is_400(server, http):
    tokens = server.control.issue_tokens("alice")
    first = get(server, http, "sleep", tokens, start_date="2024-05-01", end_date="2024-06-01").json()
    token = first["next_token"]
    assert token
    other = get(
        server, http, "sleep", tokens, start_date="2024-05-02", end_date="2024-06-01", next_token=token
    )
    assert_problem(other, 400)
    other_user = get(
        server,
        http,
        "sleep",
        server.control.issue_tokens("bob"),
        start_date="2024-05-01",
        end_date="2024-06-01",
        next_token=token,
    )
    assert_problem(other_user, 400)
    assert_problem(get(server, http, "sleep", tokens, next_token=token[:-3] + "abc"), 400)
    same = get(
        server, http, "sleep", tokens, start_date="2024-05-01", end_date="2024-06-01", next_token=token
    )
    assert same.status_code == 200


def test_single_document_routes_and_404(server, http):
    tokens = server.control.issue_tokens("alice")
    for route in DOCUMENT_ROUTES:
        listed = all_pages(server, http, route, tokens, start_date="2024-05-01", end_date="2024-06-01")
        assert listed, route
        doc = listed[len(listed) // 2]
        single = get(server, http, f"{route}/{doc['id']}", tokens)
        assert single.status_code == 200 and single.json() == doc
    assert_problem(get(server, http, "sleep/00000000-0000-4000-8000-000000000000", tokens), 404)
    assert_problem(get(server, http, "sleep/not-an-id", tokens), 404)
    someone_elses = all_pages(
        server, http, "sleep", server.control.issue_tokens("bob"), start_date="2024-05-01"
    )
    assert_problem(get(server, http, f"sleep/{someone_elses[0]['id']}", tokens), 404)


def test_days_sync_late_and_revisions_keep_the_id(server, http):
    name, day = next(
        (n, d)
        for n in (f"reviser-{i}" for i in range(200))
        for d in (date(2024, 6, 1) + timedelta(days=k) for k in range(10))
        if simdata.plan(n, d).revised_at and (simdata.plan(n, d).readiness_score or 100) < 90
    )
    plan = simdata.plan(name, day)
    tokens = server.control.issue_tokens(name)
    window = {"start_date": str(day), "end_date": str(day + timedelta(days=1))}
    assert plan.daily_visible_at and plan.revised_at
    server.control.set_clock(plan.daily_visible_at - timedelta(minutes=1), frozen=True)
    assert all_pages(server, http, "daily_readiness", tokens, **window) == []
    server.control.set_clock(plan.daily_visible_at + timedelta(minutes=1), frozen=True)
    (first,) = all_pages(server, http, "daily_readiness", tokens, **window)
    server.control.set_clock(plan.revised_at + timedelta(minutes=1), frozen=True)
    (revised,) = all_pages(server, http, "daily_readiness", tokens, **window)
    assert revised["id"] == first["id"] and revised["score"] != first["score"]


def test_newest_night_in_progress_has_null_bedtime_end(server, http):
    name, day = next(
        (n, d)
        for n in (f"night-owl-{i}" for i in range(200))
        for d in (date(2024, 6, 10),)
        if simdata.plan(n, d).in_progress and simdata.plan(n, d).main_period is not None
    )
    main = simdata.plan(name, day).main_period
    assert main is not None
    server.control.set_clock(main.start + timedelta(hours=2), frozen=True)
    tokens = server.control.issue_tokens(name)
    window = {"start_date": str(day - timedelta(days=1)), "end_date": str(day + timedelta(days=1))}
    main_id = simdata.document_id(simdata.profile(name), "sleep", day, main.index)
    current = [d for d in all_pages(server, http, "sleep", tokens, **window) if d["id"] == main_id]
    assert current and current[0]["bedtime_end"] is None and current[0]["time_in_bed"] == 7200
    server.control.set_clock(main.visible_at + timedelta(minutes=1), frozen=True)
    done = get(server, http, f"sleep/{current[0]['id']}", tokens).json()
    assert done["bedtime_end"] is not None and done["total_sleep_duration"] > 0


# Heart rate


def hr(server: SimulatorServer, http: httpx.Client, token: Any, **params: str) -> list[dict[str, Any]]:
    return all_pages(server, http, "heartrate", token, **params)


def test_heartrate_one_day_paginates_oldest_first_in_mixed_formats(server, http):
    tokens = server.control.issue_tokens("alice")
    day = hr(
        server, http, tokens, start_datetime="2024-06-10T00:00:00+00:00", end_datetime="2024-06-11T00:00:00Z"
    )
    assert len(day) > DEFAULT_PAGE_SIZES["heartrate"]
    unix = [row["timestamp_unix"] for row in day]
    assert unix == sorted(unix) and len(set(unix)) == len(unix)
    assert any(row["timestamp"].endswith(".000Z") for row in day)
    assert any(row["timestamp"].endswith("+00:00") for row in day)
    for row in day:
        parsed = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        assert int(parsed.timestamp() * 1000) == row["timestamp_unix"]


def test_heartrate_window_bounds_are_inclusive_so_chunk_boundaries_repeat(server, http):
    tokens = server.control.issue_tokens("alice")
    day = hr(
        server, http, tokens, start_datetime="2024-06-10T00:00:00+00:00", end_datetime="2024-06-11T00:00:00Z"
    )
    boundary = datetime.fromisoformat(day[len(day) // 2]["timestamp"].replace("Z", "+00:00"))
    left = hr(server, http, tokens, start_datetime="2024-06-10T00:00:00Z", end_datetime=boundary.isoformat())
    right = hr(server, http, tokens, start_datetime=boundary.isoformat(), end_datetime="2024-06-11T00:00:00Z")
    assert left[-1]["timestamp_unix"] == right[0]["timestamp_unix"] == int(boundary.timestamp() * 1000)
    assert len(left) + len(right) == len(day) + 1


def test_heartrate_over_30_days_is_400_and_30_days_is_fine(server, http):
    tokens = server.control.issue_tokens("alice")
    ok = get(
        server,
        http,
        "heartrate",
        tokens,
        start_datetime="2024-05-01T00:00:00Z",
        end_datetime="2024-05-31T00:00:00Z",
    )
    assert ok.status_code == 200
    too_long = get(
        server,
        http,
        "heartrate",
        tokens,
        start_datetime="2024-05-01T00:00:00Z",
        end_datetime="2024-05-31T00:00:01Z",
    )
    assert_problem(too_long, 400)


def test_heartrate_date_only_bounds_are_ignored(server, http):
    tokens = server.control.issue_tokens("alice")
    dated = hr(server, http, tokens, start_datetime="2024-01-01", end_datetime="2024-03-01")
    default = hr(server, http, tokens)
    assert dated == default and dated
    window_start = (CLOCK - timedelta(days=1)).timestamp() * 1000
    assert all(window_start <= row["timestamp_unix"] <= CLOCK.timestamp() * 1000 for row in dated)


def test_heartrate_unencoded_plus_in_the_offset_is_422(server, http):
    url = f"{server.url}/v2/usercollection/heartrate?start_datetime=2024-06-10T00:00:00+02:00"
    response = http.get(url, headers=bearer(server.control.issue_tokens("alice")))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "start_datetime"]


def test_no_heart_rate_and_no_documents_on_days_not_worn(server, http):
    name = "alice"
    zone = simdata.profile(name).zone
    unworn = [
        d
        for d in (date(2024, 1, 1) + timedelta(days=k) for k in range(150))
        if not simdata.plan(name, d).worn
    ]
    assert 0.02 < len(unworn) / 150 < 0.2
    day = unworn[0]
    tokens = server.control.issue_tokens(name)
    start = simdata.local_midnight(zone, day)
    samples = hr(
        server,
        http,
        tokens,
        start_datetime=start.isoformat(),
        end_datetime=(
            simdata.local_midnight(zone, day + timedelta(days=1)) - timedelta(seconds=1)
        ).isoformat(),
    )
    assert samples == []
    for route in ("daily_readiness", "daily_activity", "daily_sleep"):
        assert (
            all_pages(server, http, route, tokens, start_date=str(day), end_date=str(day + timedelta(days=1)))
            == []
        )


# Fault knobs


def test_fault_error_rate_answers_5xx(server, http):
    tokens = server.control.issue_tokens("alice")
    server.control.set_faults(error_rate=1.0)
    codes = {get(server, http, "daily_sleep", tokens).status_code for _ in range(12)}
    assert codes <= {500, 502, 503} and len(codes) >= 2
    assert server.control.stats()["injected_errors"] >= 12
    server.control.set_faults(error_rate=0)
    assert get(server, http, "daily_sleep", tokens).status_code == 200


def test_fault_drop_rate_cuts_the_connection_mid_response(server, http):
    tokens = server.control.issue_tokens("alice")
    server.control.set_faults(drop_rate=1.0)
    with httpx.Client(timeout=5) as fresh, pytest.raises(httpx.RemoteProtocolError):
        get(server, fresh, "sleep", tokens, start_date="2024-05-01", end_date="2024-06-01")
    assert server.control.stats()["dropped"] >= 1


def test_fault_latency_delays_data_routes(server, http):
    tokens = server.control.issue_tokens("alice")
    server.control.set_faults(latency_ms=250)
    started = time.perf_counter()
    assert get(server, http, "daily_sleep", tokens).status_code == 200
    assert time.perf_counter() - started >= 0.25


def test_fault_refresh_reject_answers_invalid_grant(server, http):
    tokens = connect(server, http, "rejected-user")
    server.control.set_faults(users={"rejected-user": {"refresh_reject": True}})
    refused = token_request(server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    other = connect(server, http, "fine-user")
    assert token_request(
        server, http, grant_type="refresh_token", refresh_token=other["refresh_token"]
    ).is_success


def test_fault_expire_access_tokens_expires_current_tokens_until_refreshed(server, http):
    tokens = connect(server, http, "early-expiry")
    server.control.set_faults(users={"early-expiry": {"expire_access_tokens": True}})
    assert "expired" in assert_problem(get(server, http, "daily_sleep", tokens), 401)["detail"]
    fresh = token_request(
        server, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    ).json()
    assert get(server, http, "daily_sleep", fresh).status_code == 200


def test_faults_clock_and_stats_over_http(server, http):
    body = http.post(
        server.url + "/_sim/faults", json={"latency_ms": 5, "users": {"x": {"forbidden": True}}}
    ).json()
    assert body["latency_ms"] == 5 and body["users"] == {
        "x": {
            "forbidden": True,
            "refresh_reject": False,
            "expire_access_tokens": False,
            "withhold_scopes": [],
        }
    }
    assert http.post(server.url + "/_sim/faults", json={"error_rate": 0.1}).json()["latency_ms"] == 5
    assert http.post(server.url + "/_sim/faults", json={"bogus": 1}).status_code == 400
    assert http.post(server.url + "/_sim/faults", json={"error_rate": 2}).status_code == 400
    assert http.delete(server.url + "/_sim/faults").json()["latency_ms"] == 0
    moved = http.post(
        server.url + "/_sim/clock", json={"now": "2024-07-01T08:00:00+02:00", "frozen": True}
    ).json()
    assert datetime.fromisoformat(moved["now"]) == datetime(2024, 7, 1, 6, tzinfo=UTC)
    assert server.control.now() == datetime(2024, 7, 1, 6, tzinfo=UTC)
    tokens = http.post(server.url + "/_sim/tokens", json={"user": "http-user", "scopes": ["daily"]}).json()
    get(server, http, "daily_sleep", tokens)
    stats = http.get(server.url + "/_sim/stats").json()
    assert stats["requests"]["GET /v2/usercollection/daily_sleep"]["200"] >= 1


def test_stats_count_requests_by_route_template_and_status(server, http):
    tokens = server.control.issue_tokens("alice")
    before = server.control.stats()["requests"].get("GET /v2/usercollection/sleep/{document_id}", {})
    get(server, http, "sleep/00000000-0000-4000-8000-000000000000", tokens)
    after = server.control.stats()["requests"]["GET /v2/usercollection/sleep/{document_id}"]
    assert after.get("404", 0) == before.get("404", 0) + 1


# Determinism, configuration, speed


def test_same_user_gets_the_same_data_from_two_instances(http):
    tokens: list[dict[str, Any]] = []
    bodies = []
    for _ in range(2):
        with SimulatorServer(make_config()) as instance:
            instance.control.set_clock(CLOCK, frozen=True)
            token = instance.control.issue_tokens("determined")
            tokens.append(token)
            bodies.append(
                {
                    route: all_pages(
                        instance, http, route, token, start_date="2024-05-01", end_date="2024-06-15"
                    )
                    for route in DOCUMENT_ROUTES
                }
                | {"hr": hr(instance, http, token, start_datetime="2024-06-01T00:00:00Z")}
            )
    assert tokens[0]["access_token"] != tokens[1]["access_token"]
    assert bodies[0] == bodies[1]
    assert bodies[0]["sleep"] != []


def test_users_differ_and_zones_spread_including_dst_half_hour_and_negative():
    assert simdata.personal_info("alice") != simdata.personal_info("bob")
    offsets = set()
    for name in (f"user-{i}" for i in range(60)):
        zone = simdata.profile(name).zone
        winter = datetime(2024, 1, 15, 12, tzinfo=UTC).astimezone(zone).utcoffset()
        summer = datetime(2024, 7, 15, 12, tzinfo=UTC).astimezone(zone).utcoffset()
        offsets.add((winter, summer))
    assert any(w != s for w, s in offsets), "no user in a zone that observes DST"
    assert (timedelta(hours=5, minutes=30),) * 2 in offsets
    assert any(w < timedelta(0) for w, _ in offsets)


def test_daily_timestamps_carry_the_users_local_offset_through_dst(server, http):
    name = next(
        n for n in (f"user-{i}" for i in range(60)) if str(simdata.profile(n).zone) == "Europe/Berlin"
    )
    tokens = server.control.issue_tokens(name)
    winter = all_pages(
        server, http, "daily_readiness", tokens, start_date="2024-01-10", end_date="2024-01-20"
    )
    summer = all_pages(
        server, http, "daily_readiness", tokens, start_date="2024-06-01", end_date="2024-06-11"
    )
    assert winter and summer
    assert all(d["timestamp"] == f"{d['day']}T00:00:00+01:00" for d in winter)
    assert all(d["timestamp"] == f"{d['day']}T00:00:00+02:00" for d in summer)


def test_sleep_periods_include_naps_rest_deleted_and_nights_without_long_sleep():
    days = [date(2023, 1, 1) + timedelta(days=k) for k in range(365)]
    docs = simdata.documents("alice", "sleep", days, datetime(2024, 1, 10, tzinfo=UTC))
    kinds = {d["type"] for d in docs}
    assert kinds == {"long_sleep", "sleep", "late_nap", "rest", "deleted"}
    per_day: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        per_day.setdefault(doc["day"], []).append(doc)
    assert any(len(v) > 1 for v in per_day.values())
    assert any(all(d["type"] != "long_sleep" for d in v) for v in per_day.values())
    assert any(
        d["type"] == "deleted"
        and d["time_in_bed"] > max(x["time_in_bed"] for x in v if x["type"] == "long_sleep")
        for v in per_day.values()
        for d in v
        if any(x["type"] == "long_sleep" for x in v)
    )
    assert any(None in d["hrv"]["items"] for d in docs)
    readiness = simdata.documents("alice", "daily_readiness", days, datetime(2024, 1, 10, tzinfo=UTC))
    assert any(d["score"] is None for d in readiness) and any(d["score"] for d in readiness)
    assert any(
        "meta" in d
        for n in ("alice", "bob", "carol", "dave")
        for d in simdata.documents(n, "daily_readiness", days[:60], datetime(2024, 1, 10, tzinfo=UTC))
    )


def test_a_year_of_every_collection_and_a_month_of_heart_rate_generate():
    days = [date(2022, 1, 1) + timedelta(days=k) for k in range(365)]
    total = sum(
        len(simdata.documents("speedy-user", route, days, datetime(2023, 2, 1, tzinfo=UTC)))
        for route in DOCUMENT_ROUTES
    )
    samples = simdata.heart_rate(
        "speedy-user",
        datetime(2022, 3, 1, tzinfo=UTC),
        datetime(2022, 3, 31, tzinfo=UTC),
        datetime(2023, 1, 1, tzinfo=UTC),
    )
    assert total > 1000 and len(samples) > 5000


def test_from_settings_registers_the_demo_client(tmp_path):
    settings = load_settings({"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")})
    config = SimulatorConfig.from_settings(settings)
    registration = config.clients[DEMO_CLIENT_ID]
    assert registration.secret == settings.client_secret
    assert registration.redirect_uris == (settings.redirect_uri,)
    assert settings.client_secret not in repr(config)


def test_page_sizes_merge_over_the_defaults():
    config = make_config(page_size={"heartrate": 50})
    assert config.page_size_for("heartrate") == 50
    assert config.page_size_for("sleep") == DEFAULT_PAGE_SIZES["sleep"]
    assert make_config(page_size=3).page_size_for("workout") == 3
    with pytest.raises(ValueError):
        make_config(page_size={"sleep": 0})


def test_the_foreground_simulators_access_log_hides_query_strings(tmp_path):
    """`python -m oura_assets.simulator` logs each request; the revoke URL carries the token in its query."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "OURA_ASSETS_DEMO": "1",
        "OURA_ASSETS_DATA_DIR": str(tmp_path),
        "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "oura_assets.simulator", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/_sim/clock", timeout=0.5)
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the simulator did not answer"
                time.sleep(0.1)
        httpx.post(f"{base}/oauth/revoke?access_token=revoke-me-secret", timeout=5)
        httpx.get(f"{base}/oauth/authorize?client_id=x&state=state-secret&code=code-secret", timeout=5)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "/oauth/revoke?<redacted>" in output
    for secret in ("revoke-me-secret", "state-secret", "code-secret"):
        assert secret not in output


def test_the_rate_limit_window_rolls_instead_of_resetting_at_a_boundary():
    # Oura: X-RateLimit-Window is "the rolling window length" [spec]. Fixed windows would let 2 x limit
    # through around a boundary; a rolling one refuses until the oldest counted request has aged out.
    from oura_assets.simulator.fault_settings import FaultSettings
    from oura_assets.simulator.ratelimit import RateLimitWindows

    now = [1000.9]
    windows = RateLimitWindows(make_config(app_rate_limit=RateLimit(3, 1.0)), FaultSettings(), lambda: now[0])
    assert [windows.check("app", "token") for _ in range(3)] == [None, None, None]
    now[0] = 1001.2  # a new fixed window would have started at 1001.0
    refused = windows.check("app", "token")
    assert refused is not None and refused.tier == "application" and refused.limit == 3
    assert refused.retry_after_s == 1 and refused.reset_epoch == 1002
    now[0] = 1001.95  # the first three have aged out; the refused one was never counted
    assert [windows.check("app", "token") for _ in range(3)] == [None, None, None]
    assert windows.check("app", "other-token") is not None  # the application tier counts every token


def test_the_rate_limit_counts_requests_when_they_reached_oura_not_when_the_simulator_got_to_them():
    # The simulator is one event loop: a loop busy with a heavy answer (or a GC pause) gets to several
    # requests at once. Counted when it got to them, requests that reached "Oura" spread out would look like
    # a burst; Oura's edge counts each one on arrival.
    from oura_assets.simulator.fault_settings import FaultSettings
    from oura_assets.simulator.ratelimit import RateLimitWindows

    late = [5000.0]  # the simulator's clock: it got to all of them at this one moment
    windows = RateLimitWindows(
        make_config(app_rate_limit=RateLimit(3, 1.0)), FaultSettings(), lambda: late[0]
    )
    # Seven requests that reached Oura 0.4 s apart: never more than 3 in any second, so none is refused.
    arrivals = [4997.2 + 0.4 * n for n in range(7)]
    assert [windows.check("app", "token", at=a) for a in arrivals] == [None] * 7
    # One checked after a later arrival (4999.6) is counted at its own moment: in the second before 4999.5
    # only 4998.8 and 4999.2 arrived, so it goes through; another at 4999.6 then finds four and is refused.
    assert windows.check("app", "token", at=4999.5) is None
    refused = windows.check("app", "token", at=4999.6)
    assert refused is not None and refused.retry_after_s == 1
    # Without an arrival time a request counts at the clock's now, as before.
    assert windows.check("app", "token") is not None  # 5000.0: 4999.2, 4999.5 and 4999.6 in its second
    late[0] = 5000.7
    assert windows.check("app", "token") is None  # only 4999.8+ would count: none
