"""Helpers for the connection API tests: RSA keys, hand-built JWTs (including malicious ones), and a JWKS
served over real HTTP on loopback."""

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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
