"""Helpers for the connection API tests: RSA keys, hand-built JWTs (including malicious ones), a JWKS served
over real HTTP on loopback, and a harness that drives the API in-process beside the simulator.

A plain module the API tests import (no fixtures here, so not a conftest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

ISSUER = "https://clerk.test.example"
AUDIENCE = "oura-assets-tests"


def new_key() -> RSAKey:
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    return key


def public(key: RSAKey) -> RSAKey:
    pub = RSAKey.import_key(key.as_dict(private=False))
    pub.ensure_kid()
    return pub


def claims(sub: str | None = "patient-a", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600}
    if sub is not None:
        out["sub"] = sub
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: RSAKey, payload: dict[str, Any], kid: str | None = "", alg: str = "RS256") -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid or key.kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], kid: str | None = None) -> str:
    """An `alg: none` token, built by hand (libraries rightly refuse to make one)."""
    header = {"alg": "none", "typ": "JWT", **({"kid": kid} if kid else {})}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(key: RSAKey, payload: dict[str, Any]) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the server's public RSA key (PEM)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    secret = key.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@dataclass
class JwksServer:
    """A JWKS endpoint on loopback whose key set a test can swap, counting the fetches."""

    keys: list[RSAKey]
    fetches: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def document(self) -> bytes:
        with self._lock:
            self.fetches += 1
            return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()


@contextmanager
def jwks_server(keys: list[RSAKey]) -> Iterator[JwksServer]:
    state = JwksServer(keys=keys)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = state.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ApiHarness:
    """The API under test (in-process, via TestClient) beside a real simulator and warehouse."""

    client: Any
    settings: Any
    simulator: Any
    key: RSAKey
    responses: list[Any] = field(default_factory=list)

    def token(self, patient_id: str, **overrides: Any) -> str:
        return sign(self.key, claims(patient_id, **overrides))

    def auth(self, patient_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(patient_id)}"}

    def call(self, method: str, path: str, patient_id: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if patient_id is not None:
            headers.update(self.auth(patient_id))
        response = self.client.request(method, path, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    def start_connect(self, patient_id: str) -> str:
        answer = self.call("POST", "/api/patient-graph/wearables/connect/oura", patient_id)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]["authUrl"]

    def consent(self, auth_url: str, ring_user: str | None = None, deny: bool = False) -> dict[str, str]:
        """The patient's browser at the simulator's consent page: the query Oura redirects back with."""
        import httpx

        from oura_assets.tls import tls_context

        extra = {"sim_deny": "1"} if deny else {"sim_user": ring_user or "ring-user"}
        # Added to the URL's own query (httpx's `params=` would replace it).
        url = httpx.URL(auth_url)
        answer = httpx.get(url.copy_merge_params(extra), follow_redirects=False, verify=tls_context())
        assert answer.status_code in (302, 303), answer.text
        return dict(httpx.URL(answer.headers["location"]).params)

    def callback(self, params: dict[str, str]) -> Any:
        return self.call("GET", "/api/patient-graph/wearables/callback/oura", params=params)

    def connect(self, patient_id: str, ring_user: str | None = None) -> dict[str, Any]:
        answer = self.callback(
            self.consent(self.start_connect(patient_id), ring_user or f"{patient_id}-ring")
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]


def api_harness(settings: Any, simulator: Any, key: RSAKey) -> Iterator[ApiHarness]:
    """The API on `settings` (JWTs signed by `key` accepted), for a fixture to `yield from`."""
    from starlette.testclient import TestClient

    from oura_assets.api import create_app
    from oura_assets.api.auth import JwtVerifier, StaticKeys

    verifier = JwtVerifier(keys=StaticKeys([public(key)]), issuer=ISSUER)
    with TestClient(create_app(settings, jwt_verifier=verifier)) as client:
        yield ApiHarness(client=client, settings=settings, simulator=simulator, key=key)
