"""Who is calling: the patient id from an `Authorization: Bearer` JWT (Clerk, or a local key in demo).

Verification is deliberately narrow: RS256 only (so neither `alg: none` nor an HS256 token "signed" with our
public key can pass), the issuer must match, the audience too when one is configured, `exp` is required and
`exp`/`nbf` get at most a minute of clock-skew leeway, and `sub` — the patient id everywhere in the project —
must be present. Keys come from the JWKS URL, cached; a token with an unknown `kid` triggers one refetch (the
issuer rotated its keys), and refetches are rate-limited so a flood of made-up kids cannot hammer the JWKS.

Demo mode has no Clerk: a local RSA key (generated on first use, PEM, mode 0600) signs development tokens
(`mint_dev_token`, behind `oura-assets token --patient ID`) and verifies them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jws import extract_compact

from oura_assets.config import ConfigError, Settings
from oura_assets.private_files import write_private
from oura_assets.tls import tls_context

log = logging.getLogger(__name__)

ALGORITHM = "RS256"
MAX_LEEWAY_S = 60
# Real JWTs are a few hundred bytes to a few KiB; anything far bigger is not worth parsing.
MAX_TOKEN_CHARS = 16_384


class Unauthorized(Exception):
    """The request carries no usable JWT. The message is safe to show: it never contains the token."""


class AuthUnavailable(Exception):
    """The signing keys cannot be fetched right now (JWKS down), so no token can be checked."""


class KeySource(Protocol):
    def key_for(self, kid: str | None) -> RSAKey | None:
        """The RSA verification key for `kid`, or None when there is no such key."""
        ...


def _usable(key: object) -> bool:
    """RSA signature keys meant for RS256 (or for no algorithm in particular)."""
    if not isinstance(key, RSAKey):
        return False
    use, alg = key.get("use"), key.get("alg")
    return use in (None, "sig") and alg in (None, ALGORITHM)


def _pick(keys: list[RSAKey], kid: str | None) -> RSAKey | None:
    if kid is None:
        # A token without a kid is only unambiguous when there is exactly one key to try.
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.kid == kid), None)


class StaticKeys:
    """A fixed set of keys (demo mode's local key, or keys a test hands in)."""

    def __init__(self, keys: list[RSAKey]) -> None:
        self._keys = [key for key in keys if _usable(key)]

    def key_for(self, kid: str | None) -> RSAKey | None:
        return _pick(self._keys, kid)


class JwksKeys:
    """Keys from a JWKS URL: fetched on first use, cached, refetched when a token names an unknown `kid`.

    `min_fetch_interval_s` bounds how often the URL is fetched at all, so unknown kids (an attacker's, or a
    broken client's) cost at most one fetch per interval. Cached keys older than `max_age_s` are refreshed on
    the next use so a key the issuer withdrew stops being trusted; if that refresh fails the cache is kept.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.Client | None = None,
        timeout_s: float = 5.0,
        min_fetch_interval_s: float = 30.0,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._http = http or httpx.Client(timeout=timeout_s, follow_redirects=False, verify=tls_context())
        self._min_interval = min_fetch_interval_s
        self._max_age = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[RSAKey] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self.fetches = 0

    def _may_fetch(self) -> bool:
        return self._clock() - self._attempted_at >= self._min_interval

    def _fetch(self) -> bool:
        """Replace the cached keys from the URL. False (cache untouched) when the JWKS cannot be read."""
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            answer = self._http.get(self.url, headers={"Accept": "application/json"})
            answer.raise_for_status()
            key_set = KeySet.import_key_set(answer.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
            log.warning("could not read the JWKS at %s (%s)", self.url, type(exc).__name__)
            return False
        self._keys = [key for key in key_set.keys if _usable(key)]  # type: ignore[misc]
        self._fetched_at = self._attempted_at
        return True

    def key_for(self, kid: str | None) -> RSAKey | None:
        with self._lock:
            stale = self._clock() - self._fetched_at >= self._max_age
            if (self._keys is None or stale) and self._may_fetch():
                self._fetch()
            if self._keys is None:
                raise AuthUnavailable("the JWT signing keys (JWKS) cannot be fetched right now")
            key = _pick(self._keys, kid)
            if key is None and kid is not None and self._may_fetch():
                log.info("unknown JWT key id; refetching the JWKS once")
                self._fetch()
                key = _pick(self._keys, kid)
            return key


@dataclass(frozen=True)
class JwtVerifier:
    """Checks a Bearer JWT and returns the patient id (`sub`)."""

    keys: KeySource
    issuer: str
    audience: str | None = None
    leeway_s: int = MAX_LEEWAY_S
    now: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"JWT leeway must be between 0 and {MAX_LEEWAY_S} seconds")
        if not self.issuer:
            raise ValueError("a JWT issuer is required")

    def verify(self, token: str) -> str:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("the bearer token is missing or malformed")
        try:
            header = extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise Unauthorized("the bearer token is not a signed JWT") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"only {ALGORITHM}-signed tokens are accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the bearer token's key id is malformed")
        key = self.keys.key_for(kid)
        if key is None:
            raise Unauthorized("the bearer token was not signed by a known key")
        try:
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except JoseError:
            raise Unauthorized("the bearer token's signature does not verify") from None
        options: dict[str, jwt.ClaimsOption] = {
            "iss": {"essential": True, "value": self.issuer},
            "sub": {"essential": True},
            "exp": {"essential": True},
        }
        if self.audience:
            options["aud"] = {"essential": True, "value": self.audience}
        registry = jwt.JWTClaimsRegistry(now=self.now, leeway=self.leeway_s, **options)
        try:
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise Unauthorized("the bearer token has expired") from None
        except MissingClaimError as exc:
            raise Unauthorized(f"the bearer token lacks a required claim ({exc.claim})") from None
        except ClaimError as exc:
            raise Unauthorized(f"the bearer token is not valid here ({exc.claim})") from None
        subject = decoded.claims["sub"]
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthorized("the bearer token has no subject")
        return subject


def demo_signing_key(path: Path) -> RSAKey:
    """The demo's private RSA key, generated into `path` (PEM, mode 0600) the first time it is needed."""
    if not path.exists():
        key = RSAKey.generate_key(2048, private=True)
        # If another process generated it first, use theirs.
        with contextlib.suppress(FileExistsError):
            write_private(path, key.as_pem(private=True), overwrite=False)
    key = RSAKey.import_key(path.read_bytes())
    key.ensure_kid()
    return key


def verifier_from_settings(settings: Settings) -> JwtVerifier:
    """Clerk's JWKS outside demo mode; the local demo key in demo mode (`oura-assets token` signs with it)."""
    if settings.demo:
        key = demo_signing_key(settings.demo_jwt_key_path)
        public = RSAKey.import_key(key.as_dict(private=False))
        public.ensure_kid()
        keys: KeySource = StaticKeys([public])
    else:
        if not settings.clerk_jwks_url:
            raise ConfigError("CLERK_JWKS_URL is not set (needed for jwt)")
        keys = JwksKeys(settings.clerk_jwks_url)
    if not settings.clerk_issuer:
        raise ConfigError("CLERK_ISSUER is not set (needed for jwt)")
    return JwtVerifier(keys=keys, issuer=settings.clerk_issuer, audience=settings.clerk_audience)


def mint_dev_token(settings: Settings, patient_id: str, ttl_s: int = 3600) -> str:
    """A development JWT for `patient_id`, signed by the demo key. Demo mode only: a real deployment's tokens
    come from Clerk, and a signing key lying around outside demo mode would be a way in."""
    if not settings.demo:
        raise ConfigError(
            "development tokens exist only in demo mode (OURA_ASSETS_DEMO=1); outside it, use a JWT from "
            "your identity provider (CLERK_ISSUER)"
        )
    if not patient_id or not patient_id.strip():
        raise ConfigError("a patient id is required (--patient ID)")
    if not 1 <= ttl_s <= 7 * 24 * 3600:
        raise ConfigError("the token lifetime must be between 1 second and 7 days")
    if not settings.clerk_issuer:
        raise ConfigError("CLERK_ISSUER is not set (needed for jwt)")
    key = demo_signing_key(settings.demo_jwt_key_path)
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": settings.clerk_issuer,
        "sub": patient_id,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    if settings.clerk_audience:
        claims["aud"] = settings.clerk_audience
    return jwt.encode({"alg": ALGORITHM, "kid": key.kid}, claims, key, algorithms=[ALGORITHM])
