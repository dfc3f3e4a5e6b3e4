"""The connection API against hostile callers: property tests (hypothesis) over every route, a plain test per
hole found by hand (issue 7): a 500 on `0001-01-01`, a 200 MB body read whole, a 64 MB header taken
without auth, a redirect built from the `Host` header, OAuth states never purged.

The properties, for any body, headers, query string, path, date or JWT a caller can send:
- never a 500 (and never a redirect; every refusal in the JSON envelope);
- never a stored row: the connection, sync, event and OAuth state tables are exactly as before;
- never a reflected secret: a valid JWT, an issued state, a code and the client secret, wherever the request
  carries them, appear neither in the answer nor in any log line the app wrote.

The app runs in-process (TestClient; httpx's ASGITransport where a test must watch the body being pulled).
Nothing here talks to Oura: no request a hostile caller can make gets that far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import string
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient

from oura_assets import warehouse as wh
from oura_assets.api import create_app
from oura_assets.api.auth import JwtVerifier, StaticKeys
from oura_assets.api.limits import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_URL_BYTES,
    SERVER_MAX_HEAD_BYTES,
)
from oura_assets.api.server import ApiServer
from oura_assets.api.service import EARLIEST_DAY, INITIAL_SYNC_DAYS, MAX_SYNC_DAYS
from oura_assets.api.state import STATE_TTL, new_state, state_hash
from oura_assets.config import Settings, load_settings
from oura_assets.oura.oauth import TokenSet
from oura_assets.tokens import TokenCipher, store_granted_tokens
from oura_assets_tests.api_support import (
    ISSUER,
    b64,
    claims,
    hs256_with_public_key,
    new_key,
    public,
    sign,
    unsigned,
)
from oura_assets_tests.conftest import TEST_CLIENT_SECRET

W = "/api/patient-graph/wearables"
KEY = new_key()
OTHER_KEY = new_key()
CONNECTED = "patient-connected"
UNCONNECTED = "patient-unconnected"
FIRST_DAY = date(2024, 1, 1)
# Every route of CONTRACT §3 (the webhook routes too, whether or not this build serves them) and /healthz.
ROUTES = [
    ("POST", f"{W}/connect/oura"),
    ("GET", f"{W}/callback/oura"),
    ("POST", f"{W}/sync"),
    ("GET", f"{W}/sync/some-sync-id"),
    ("GET", f"{W}/connections"),
    ("DELETE", f"{W}/connections/oura"),
    ("GET", f"{W}/webhooks/oura"),
    ("POST", f"{W}/webhooks/oura"),
    ("GET", "/healthz"),
]
WATCHED_TABLES = ("wearable_connections", "sync_requests", "patient_events", "oauth_states")
# The test client's own request lines (httpx logs every URL it sends); the app's outgoing calls would log
# there too, but no hostile request makes one.
CLIENT_LOGGERS = ("httpx", "httpcore")
TALLY = {"sent": 0, "500s": 0}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in CLIENT_LOGGERS:
            return
        self.lines.append(self.format(record))


class Hostile:
    """The API under attack, its warehouse, the secrets it holds and the log lines it wrote."""

    def __init__(self, client: TestClient, settings: Settings, state: str, logs: Captured) -> None:
        self.client = client
        self.settings = settings
        self.logs = logs
        # Set by the `unchanged` fixture: what the watched tables held before the test, checked per request.
        self.baseline: dict[str, list[tuple]] | None = None
        self.jwt = sign(KEY, claims(CONNECTED))
        self.unconnected_jwt = sign(KEY, claims(UNCONNECTED))
        self.secrets = {
            "jwt": self.jwt,
            "unconnected jwt": self.unconnected_jwt,
            "state": state,
            "code": "oura-code-" + "Zq9xW4vT1sKe",
            "client secret": TEST_CLIENT_SECRET,
        }

    def snapshot(self) -> dict[str, list[tuple]]:
        with wh.Warehouse(self.settings.warehouse_path).connect("test: snapshot") as conn:
            return {
                table: conn.execute(f"SELECT * FROM patient_graph.{table} ORDER BY ALL").fetchall()  # noqa: S608
                for table in WATCHED_TABLES
            }

    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        TALLY["sent"] += 1
        answer = self.client.request(method, url, **kwargs)
        if answer.status_code >= 500 and answer.status_code != 503:
            TALLY["500s"] += 1
        return answer

    def check(self, method: str, answer: httpx.Response) -> None:
        """The answer-side properties: no 500, no redirect, the envelope, no secret in the body or logs."""
        assert answer.status_code < 500, answer.text
        assert "location" not in answer.headers
        assert not 300 <= answer.status_code < 400
        if answer.status_code >= 400 and method != "HEAD":
            body = answer.json()
            assert body["success"] is False and set(body["error"]) == {"code", "message"}, body
        log_text = "\n".join(self.logs.lines)
        for name, secret in self.secrets.items():
            assert secret not in answer.text, f"the {name} came back in the answer"
            assert secret not in str(answer.headers), f"the {name} came back in a header"
            assert secret not in log_text, f"the {name} reached a log line"
        if self.baseline is not None:
            assert self.snapshot() == self.baseline, "a hostile request stored or changed a row"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    folder = tmp_path_factory.mktemp("hostile-api")
    env = {
        "OURA_CLIENT_ID": "test-client",
        "OURA_CLIENT_SECRET": TEST_CLIENT_SECRET,
        # Nothing listens on port 9: should a request ever reach Oura, it fails instead of connecting.
        "OURA_REDIRECT_URI": "http://127.0.0.1:9/api/patient-graph/wearables/callback/oura",
        "OURA_AUTHORIZE_URL": "http://127.0.0.1:9/oauth/authorize",
        "OURA_TOKEN_URL": "http://127.0.0.1:9/oauth/token",
        "OURA_REVOKE_URL": "http://127.0.0.1:9/oauth/revoke",
        "OURA_API_BASE_URL": "http://127.0.0.1:9",
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
        "OURA_ASSETS_WAREHOUSE": str(folder / "warehouse.duckdb"),
        "OURA_ASSETS_START_DATE": FIRST_DAY.isoformat(),
    }
    settings = load_settings(env, require=("oauth", "tokens"))
    store = wh.Warehouse(settings.warehouse_path)
    store.ensure_schema()
    state = new_state()
    now = datetime.now(UTC)
    granted = TokenSet("access-" + "k3yQ", "refresh-" + "p8Lm", now + timedelta(days=1), ("daily",))
    with store.transaction("test: a connected patient and a pending state") as conn:
        store_granted_tokens(
            conn, CONNECTED, granted, TokenCipher(settings.token_keys), oura_user_id=None, connected_at=now
        )
        wh.save_oauth_state(conn, state_hash(state), CONNECTED, now + timedelta(days=1))
    logs = Captured()
    root, ours = logging.getLogger(), logging.getLogger("oura_assets")
    levels = root.level, ours.level
    root.addHandler(logs)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.DEBUG)
    app = create_app(settings, jwt_verifier=JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER))
    try:
        with TestClient(app, follow_redirects=False) as client:
            yield Hostile(client, settings, state, logs)
    finally:
        root.removeHandler(logs)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        print(f"\nhostile requests sent: {TALLY['sent']}, 500s: {TALLY['500s']}")


@pytest.fixture
def unchanged(hostile: Hostile) -> Iterator[Hostile]:
    """The watched tables stay exactly as before the test: after each checked request, and at the end."""
    hostile.baseline = before = hostile.snapshot()
    try:
        yield hostile
    finally:
        hostile.baseline = None
    assert hostile.snapshot() == before


HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Header-safe text: printable ASCII without CR/LF (a client library refuses those before they are sent).
HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_.,;:=/+!*'()~%@", max_size=200)
TOKEN_NAME = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=30)
JUNK = st.one_of(st.text(max_size=60), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none())


@st.composite
def secret_or_junk(draw: st.DrawFn, hostile: Hostile) -> Any:
    if draw(st.booleans()):
        return draw(st.sampled_from(sorted(hostile.secrets.values())))
    return draw(JUNK)


def json_bodies(hostile: Hostile) -> st.SearchStrategy[bytes]:
    values = st.recursive(
        st.one_of(JUNK, secret_or_junk(hostile), st.dates().map(date.isoformat)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=20), inner, max_size=4)
        ),
        max_leaves=12,
    )
    sync_like = st.fixed_dictionaries(
        {"source": st.one_of(st.just("oura"), secret_or_junk(hostile))},
        optional={
            "startDate": st.one_of(st.dates().map(date.isoformat), secret_or_junk(hostile)),
            "endDate": st.one_of(st.dates().map(date.isoformat), secret_or_junk(hostile)),
        },
    )
    secret_keys = st.dictionaries(st.sampled_from(sorted(hostile.secrets.values())), JUNK, max_size=2)
    sync_like = st.tuples(sync_like, secret_keys).map(lambda pair: {**pair[0], **pair[1]})
    return st.one_of(values, sync_like).map(lambda value: json.dumps(value, default=str).encode())


def bodies(hostile: Hostile) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(max_size=300),
        json_bodies(hostile),
        # Around the cap: the limit must hold exactly, whatever the content.
        st.integers(MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 2).map(lambda n: b"[" + b" " * (n - 2) + b"]"),
    )


def authorizations(hostile: Hostile) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        HEADER_TEXT,
        st.sampled_from(sorted(hostile.secrets.values())).map(lambda s: f"Bearer {s}"),
        st.just(f"Bearer {hostile.unconnected_jwt}"),
        st.just(f"bearer  {hostile.jwt[:-3]}"),
        HEADER_TEXT.map(lambda s: f"Bearer {s}"),
    )


def query_strings(hostile: Hostile) -> st.SearchStrategy[str]:
    pairs = st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["code", "state", "error", "erase", "challenge"]), TOKEN_NAME),
            st.one_of(
                st.sampled_from(sorted(hostile.secrets.values())),
                st.text(alphabet=string.printable, max_size=80),
            ),
        ),
        max_size=6,
    )
    raw = st.text(alphabet=string.ascii_letters + string.digits + "%&=+;?#/.-_~", max_size=120)
    return st.one_of(pairs.map(lambda p: str(httpx.QueryParams(p))), raw)


@HYPOTHESIS
@given(data=st.data())
def test_hostile_requests_to_every_route_never_500_store_nothing_reflect_nothing(
    unchanged: Hostile, data: st.DataObject
) -> None:
    hostile = unchanged
    method, path = data.draw(st.sampled_from(ROUTES))
    method = data.draw(st.sampled_from([method, method, "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE"]))
    suffix = data.draw(st.sampled_from(["", "", "/", "//", "/..", "/%00", "/" + hostile.secrets["state"]]))
    authorization = data.draw(authorizations(hostile))
    if authorization and (hostile.jwt in authorization or hostile.unconnected_jwt in authorization):
        # A patient's own valid request may store a row (a connect saves a state, a disconnect disconnects):
        # with a valid JWT only the routes where nothing a caller sends can store anything.
        method, path = data.draw(
            st.sampled_from([("POST", f"{W}/sync"), ("GET", f"{W}/sync/x"), ("GET", f"{W}/connections")])
        )
        if method == "POST":
            authorization = f"Bearer {hostile.unconnected_jwt}"
    headers = data.draw(st.dictionaries(TOKEN_NAME.map(lambda n: "x-" + n), HEADER_TEXT, max_size=5))
    if authorization is not None:
        headers["Authorization"] = authorization
    headers["Host"] = data.draw(st.sampled_from(["testserver", "evil.example", "evil.example:8443", ""]))
    headers["Content-Type"] = data.draw(
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])
    )
    query = data.draw(query_strings(hostile))
    body = data.draw(bodies(hostile))
    answer = hostile.send(
        method, path + suffix + ("?" + query if query else ""), headers=headers, content=body
    )
    hostile.check(method, answer)
    if len(body) > MAX_BODY_BYTES:
        assert answer.status_code == 413


def jwt_headers() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "none", "HS256", "RS512", "ES256", ""])},
        optional={"kid": st.one_of(st.just(public(KEY).kid), st.text(max_size=20), st.integers())},
    )


def claim_values() -> st.SearchStrategy[Any]:
    now = int(datetime.now(UTC).timestamp())
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([now - 3600, now + 600, now, 0, -1, 2**63, 10**20]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@st.composite
def hostile_jwts(draw: st.DrawFn) -> str:
    payload: dict[str, Any] = {
        "iss": draw(st.one_of(st.just(ISSUER), st.text(max_size=20), claim_values())),
        "sub": draw(st.one_of(st.text(max_size=30), claim_values())),
        "exp": draw(claim_values()),
        "nbf": draw(claim_values()),
        "iat": draw(claim_values()),
        "aud": draw(st.one_of(st.none(), st.text(max_size=10), st.lists(st.text(max_size=5), max_size=2))),
    }
    payload = {k: v for k, v in payload.items() if v is not None or draw(st.booleans())}
    kind = draw(st.sampled_from(["signed", "signed", "other-key", "none", "hs256", "header", "garbage"]))
    if kind in ("signed", "other-key"):
        # A signer needs strict JSON: a non-finite float claim becomes null (text claims stay as drawn; the
        # old textual replace turned "-Infinity" into "-null" and broke the generator itself).
        return sign(KEY if kind == "signed" else OTHER_KEY, _finite(payload))
    if kind == "none":
        return unsigned(payload)
    if kind == "hs256":
        return hs256_with_public_key(public(KEY), payload)
    if kind == "header":
        head = json.dumps(draw(jwt_headers())).encode()
        claims_part = b64(json.dumps(payload, default=str).encode())
        return f"{b64(head)}.{claims_part}.{b64(draw(st.binary(max_size=64)))}"
    return draw(st.text(alphabet=string.ascii_letters + string.digits + "-_.=", max_size=300))


@HYPOTHESIS
@given(token=hostile_jwts(), route=st.sampled_from([r for r in ROUTES if "connect/" not in r[1]]))
def test_hostile_jwts_never_500_store_nothing_reflect_nothing(
    unchanged: Hostile, token: str, route: tuple[str, str]
) -> None:
    hostile = unchanged
    # A token shaped like a JWT is a secret the answer must not repeat; a few letters of garbage may well
    # occur in any message, so those only have to be answered.
    if token.count(".") == 2 and len(token) > 20:
        hostile.secrets["hostile jwt"] = token
    try:
        method, path = route
        answer = hostile.send(
            method, path, headers={"Authorization": f"Bearer {token}"}, content=b'{"source": "oura"}'
        )
        hostile.check(method, answer)
        if "/healthz" not in path and "/webhooks/" not in path and "/callback/" not in path:
            # Whatever the token claims, it is either refused or names a patient who has nothing to lose.
            assert answer.status_code in (401, 404, 409, 200), answer.text
    finally:
        hostile.secrets.pop("hostile jwt", None)


def sane_range(start: date | None, end: date | None, today: date) -> bool:
    """Independent statement of which sync ranges are accepted (CONTRACT §3 + issue 7)."""
    floor = max(FIRST_DAY, EARLIEST_DAY)
    if any(day is not None and not floor <= day <= today for day in (start, end)):
        return False
    end = end or today
    start = start or max(floor, end - timedelta(days=INITIAL_SYNC_DAYS - 1))
    return start <= end and (end - start).days < MAX_SYNC_DAYS


def around(day: date) -> st.SearchStrategy[date]:
    return st.integers(-2, 2).map(lambda n: day + timedelta(days=n))


@HYPOTHESIS
@given(data=st.data())
def test_hostile_sync_dates_are_422_never_500_and_store_nothing(
    unchanged: Hostile, data: st.DataObject
) -> None:
    hostile = unchanged
    today = datetime.now(UTC).date()
    days = st.one_of(
        st.dates(),
        st.sampled_from([date.min, date.max, date(1, 1, 30), date(1999, 12, 31)]),
        around(FIRST_DAY),
        around(today + timedelta(days=1)),
        around(today - timedelta(days=MAX_SYNC_DAYS)),
    )
    start = data.draw(st.one_of(st.none(), days))
    end = data.draw(st.one_of(st.none(), days))
    if sane_range(start, end, today):
        # A sane range would queue a sync for the connected patient: this test is about the others.
        start = date.min
    body = {"source": "oura"}
    if start is not None:
        body["startDate"] = start.isoformat()
    if end is not None:
        body["endDate"] = end.isoformat()
    answer = hostile.send("POST", f"{W}/sync", headers={"Authorization": f"Bearer {hostile.jwt}"}, json=body)
    hostile.check("POST", answer)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


@HYPOTHESIS
@given(
    headers=st.lists(st.tuples(TOKEN_NAME, HEADER_TEXT), min_size=0, max_size=MAX_HEADER_COUNT + 10),
    filler=st.integers(0, MAX_HEADER_BYTES + 1024),
    route=st.sampled_from(ROUTES),
)
def test_hostile_header_sets_are_431_when_over_the_limits(
    unchanged: Hostile, headers: list[tuple[str, str]], filler: int, route: tuple[str, str]
) -> None:
    hostile = unchanged
    method, path = route
    sent = [*headers, ("x-filler", "f" * filler)]
    answer = hostile.send(method, path, headers=sent)
    hostile.check(method, answer)
    raw = answer.request.headers.raw
    over = len(raw) > MAX_HEADER_COUNT or sum(len(k) + len(v) for k, v in raw) > MAX_HEADER_BYTES
    assert (answer.status_code == 431) == over, (answer.status_code, len(raw))


# The holes reproduced by hand, one plain test each.


def test_end_date_0001_01_01_is_422_not_500(hostile: Hostile) -> None:
    for body in (
        {"source": "oura", "endDate": "0001-01-01"},
        {"source": "oura", "startDate": "0001-01-01"},
        {"source": "oura", "startDate": "0001-01-01", "endDate": "9999-12-31"},
        {"source": "oura", "endDate": "9999-12-31"},
    ):
        answer = hostile.send(
            "POST", f"{W}/sync", headers={"Authorization": f"Bearer {hostile.jwt}"}, json=body
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"


def test_sync_end_date_near_the_first_day_covers_from_the_first_day(hostile: Hostile) -> None:
    """Without a startDate the last 30 days are cut at the first partition, not refused."""
    end = FIRST_DAY + timedelta(days=3)
    answer = hostile.send(
        "POST",
        f"{W}/sync",
        headers={"Authorization": f"Bearer {hostile.jwt}"},
        json={"source": "oura", "endDate": end.isoformat()},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["data"]["startDate"] == FIRST_DAY.isoformat()


def counting_body(chunk: bytes, chunks: int, pulled: list[int]) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            pulled[0] += 1
            yield chunk

    return body()


def post_streamed(
    app: Starlette, headers: dict[str, str], chunk: bytes, chunks: int
) -> tuple[int, dict, int]:
    """POST /sync with a streamed body through ASGITransport, which pulls the body only as the app reads."""
    pulled = [0]

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(
                f"{W}/sync", headers=headers, content=counting_body(chunk, chunks, pulled)
            )

    answer = asyncio.run(go())
    return answer.status_code, answer.json(), pulled[0]


def test_200_mb_streamed_body_is_413_after_reading_no_more_than_the_cap(unchanged: Hostile) -> None:
    app = unchanged.client.app
    chunk = b"x" * 1024
    chunks = 200 * 1024  # 200 MB, were it all pulled
    status, body, pulled = post_streamed(app, {"Authorization": f"Bearer {unchanged.jwt}"}, chunk, chunks)
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    # The chunk that crossed the cap is the last one pulled.
    assert pulled == MAX_BODY_BYTES // len(chunk) + 1


def test_declared_oversized_body_is_413_before_auth_and_before_a_byte_is_read(unchanged: Hostile) -> None:
    app = unchanged.client.app
    headers = {"Content-Length": str(200 * 1024 * 1024)}
    status, body, pulled = post_streamed(app, headers, b"x" * 1024, 10)
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert pulled == 0


def test_big_header_is_431_before_auth(unchanged: Hostile) -> None:
    for headers in (
        {"X-Big": "a" * (MAX_HEADER_BYTES + 1)},
        {f"x-h{i}": "1" for i in range(MAX_HEADER_COUNT + 1)},
        {"Authorization": "Bearer " + "a" * (4 * 1024 * 1024)},
    ):
        answer = unchanged.send("GET", f"{W}/connections", headers=headers)
        assert answer.status_code == 431
        assert answer.json()["error"]["code"] == "headers_too_large"
        assert "www-authenticate" not in answer.headers  # refused before auth looked at it


def test_long_url_is_414(unchanged: Hostile) -> None:
    answer = unchanged.send("GET", f"{W}/callback/oura?code=" + "c" * MAX_URL_BYTES + "&state=s")
    assert answer.status_code == 414
    assert answer.json()["error"]["code"] == "uri_too_long"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", f"{W}/sync/"), ("POST", f"{W}/sync/"), ("GET", f"{W}/connections/")]
)
def test_trailing_slash_with_a_foreign_host_is_a_json_404_or_405_without_location(
    unchanged: Hostile, method: str, path: str
) -> None:
    answer = unchanged.send(method, path, headers={"Host": "evil.example"})
    assert answer.status_code in (404, 405)
    assert "location" not in answer.headers
    assert answer.json()["success"] is False
    assert "evil.example" not in answer.text


def test_expired_oauth_states_are_purged_on_connect(hostile: Hostile) -> None:
    store = wh.Warehouse(hostile.settings.warehouse_path)
    now = datetime.now(UTC)
    expired = [state_hash(new_state()) for _ in range(5)]
    live = state_hash(new_state())
    with store.transaction("test: old states") as conn:
        for i, digest in enumerate(expired):
            wh.save_oauth_state(
                conn,
                digest,
                "patient-old",
                now - STATE_TTL - timedelta(hours=i),
                created_at=now - timedelta(days=1),
            )
        wh.save_oauth_state(conn, live, "patient-old", now + timedelta(minutes=5))
    answer = hostile.send("POST", f"{W}/connect/oura", headers={"Authorization": f"Bearer {hostile.jwt}"})
    assert answer.status_code == 200, answer.text
    with store.connect("test: read") as conn:
        left = {
            row[0] for row in conn.execute("SELECT state_hash FROM patient_graph.oauth_states").fetchall()
        }
    assert not left & set(expired)
    assert live in left
    assert state_hash(hostile.secrets["state"]) in left  # the pending state from the fixture, still valid
    assert len(left) == 3  # those two and the one this connect issued


def raw_request(port: int, head: bytes) -> bytes:
    """Send a request head as is and read the answer until the server closes the connection."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may stop reading before all of an oversized head is sent, and reset the connection.
        with contextlib.suppress(OSError):
            sock.sendall(head)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_server_cuts_off_a_request_head_beyond_its_bound(hostile: Hostile) -> None:
    """Over real HTTP: a head over the app's limit gets the 431 envelope, one over the server's is dropped."""
    verifier = JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER)
    with ApiServer(hostile.settings, jwt_verifier=verifier) as server:
        request = f"GET {W}/connections HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: ".encode()
        over_app = raw_request(server.port, request + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
        assert over_app.startswith(b"HTTP/1.1 431"), over_app[:200]
        assert b'"headers_too_large"' in over_app
        over_server = raw_request(server.port, request + b"a" * (SERVER_MAX_HEAD_BYTES * 4) + b"\r\n\r\n")
        assert over_server.startswith(b"HTTP/1.1 400"), over_server[:200]
