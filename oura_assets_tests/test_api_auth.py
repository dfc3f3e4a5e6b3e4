"""Bearer JWT verification: what passes, every forgery that must not, and how the JWKS is fetched."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from oura_assets.api.auth import (
    AuthUnavailable,
    JwksKeys,
    JwtVerifier,
    StaticKeys,
    Unauthorized,
    mint_dev_token,
    verifier_from_settings,
)
from oura_assets.config import ConfigError, load_settings
from oura_assets_tests.api_support import (
    AUDIENCE,
    ISSUER,
    claims,
    hs256_with_public_key,
    jwks_server,
    new_key,
    public,
    sign,
    unsigned,
)

KEY = new_key()
OTHER_KEY = new_key()


def verifier(audience: str | None = None) -> JwtVerifier:
    return JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER, audience=audience)


def test_valid_token_gives_the_patient_id() -> None:
    assert verifier().verify(sign(KEY, claims("patient-a"))) == "patient-a"


def test_token_without_kid_is_accepted_when_there_is_one_key() -> None:
    assert verifier().verify(sign(KEY, claims("patient-a"), kid=None)) == "patient-a"


@pytest.mark.parametrize(
    ("name", "make_token", "reason"),
    [
        ("wrong key, right kid", lambda: sign(OTHER_KEY, claims(), kid=KEY.kid), "signature"),
        ("wrong key, own kid", lambda: sign(OTHER_KEY, claims()), "known key"),
        ("alg none", lambda: unsigned(claims(), kid=KEY.kid), "RS256"),
        ("alg none without kid", lambda: unsigned(claims()), "RS256"),
        ("HS256 keyed with the public key", lambda: hs256_with_public_key(KEY, claims()), "RS256"),
        ("expired beyond leeway", lambda: sign(KEY, claims(exp=int(time.time()) - 61)), "expired"),
        ("no exp", lambda: sign(KEY, {k: v for k, v in claims().items() if k != "exp"}), "exp"),
        ("nbf in the future", lambda: sign(KEY, claims(nbf=int(time.time()) + 120)), "nbf"),
        ("missing sub", lambda: sign(KEY, claims(sub=None)), "sub"),
        ("empty sub", lambda: sign(KEY, claims(sub="")), "sub"),
        ("wrong issuer", lambda: sign(KEY, claims(iss="https://evil.example")), "iss"),
        ("no issuer", lambda: sign(KEY, {k: v for k, v in claims().items() if k != "iss"}), "iss"),
        ("not a JWT", lambda: "not-a-jwt", "not a signed JWT"),
        ("tampered payload", lambda: _tamper(sign(KEY, claims("patient-a"))), "signature"),
    ],
)
def test_forged_or_invalid_tokens_are_rejected(name: str, make_token, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        verifier().verify(make_token())
    assert reason in str(caught.value), name


def _tamper(token: str) -> str:
    from oura_assets_tests.api_support import b64

    header, _, signature = token.split(".")
    forged = b64(b'{"iss":"%s","sub":"patient-b","exp":9999999999}' % ISSUER.encode())
    return f"{header}.{forged}.{signature}"


def test_clock_skew_within_a_minute_is_tolerated() -> None:
    now = int(time.time())
    assert verifier().verify(sign(KEY, claims(exp=now - 30, nbf=now + 30, iat=now + 30))) == "patient-a"


def test_leeway_above_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="leeway"):
        JwtVerifier(keys=StaticKeys([public(KEY)]), issuer=ISSUER, leeway_s=61)


def test_audience_is_checked_when_configured() -> None:
    check = verifier(audience=AUDIENCE)
    assert check.verify(sign(KEY, claims(aud=AUDIENCE))) == "patient-a"
    assert check.verify(sign(KEY, claims(aud=["other", AUDIENCE]))) == "patient-a"
    with pytest.raises(Unauthorized, match="aud"):
        check.verify(sign(KEY, claims(aud="someone-else")))
    with pytest.raises(Unauthorized, match="aud"):
        check.verify(sign(KEY, claims()))


def test_audience_is_ignored_when_not_configured() -> None:
    assert verifier().verify(sign(KEY, claims(aud="anything"))) == "patient-a"


def test_jwks_is_fetched_once_and_cached() -> None:
    with jwks_server([public(KEY)]) as jwks:
        keys = JwksKeys(jwks.url)
        check = JwtVerifier(keys=keys, issuer=ISSUER)
        for _ in range(5):
            assert check.verify(sign(KEY, claims())) == "patient-a"
        assert jwks.fetches == 1


def test_jwks_unknown_kid_refetches_once_then_accepts_the_rotated_key() -> None:
    rotated = new_key()
    with jwks_server([public(KEY)]) as jwks:
        clock = [1000.0]
        check = JwtVerifier(keys=JwksKeys(jwks.url, clock=lambda: clock[0]), issuer=ISSUER)
        assert check.verify(sign(KEY, claims())) == "patient-a"
        jwks.keys = [public(KEY), public(rotated)]
        clock[0] += 31
        assert check.verify(sign(rotated, claims("patient-r"))) == "patient-r"
        assert jwks.fetches == 2


def test_jwks_flood_of_unknown_kids_fetches_at_most_once_per_interval() -> None:
    with jwks_server([public(KEY)]) as jwks:
        clock = [1000.0]
        check = JwtVerifier(keys=JwksKeys(jwks.url, clock=lambda: clock[0]), issuer=ISSUER)
        check.verify(sign(KEY, claims()))
        clock[0] += 31
        for n in range(50):
            with pytest.raises(Unauthorized, match="known key"):
                check.verify(sign(OTHER_KEY, claims(), kid=f"made-up-{n}"))
        assert jwks.fetches == 2  # the first fetch and one refetch, not fifty-one
        clock[0] += 31
        with pytest.raises(Unauthorized):
            check.verify(sign(OTHER_KEY, claims(), kid="made-up-again"))
        assert jwks.fetches == 3


def test_jwks_concurrent_unknown_kids_share_one_refetch() -> None:
    with jwks_server([public(KEY)]) as jwks:
        check = JwtVerifier(keys=JwksKeys(jwks.url, min_fetch_interval_s=60), issuer=ISSUER)
        check.verify(sign(KEY, claims()))
        errors: list[Exception] = []

        def attempt(n: int) -> None:
            try:
                check.verify(sign(OTHER_KEY, claims(), kid=f"x-{n}"))
            except Unauthorized as exc:
                errors.append(exc)

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(errors) == 20
        assert jwks.fetches == 1  # within the interval of the first fetch: no refetch at all


def test_jwks_unreachable_is_unavailable_not_unauthorized() -> None:
    check = JwtVerifier(keys=JwksKeys("http://127.0.0.1:9/jwks.json", timeout_s=0.5), issuer=ISSUER)
    with pytest.raises(AuthUnavailable):
        check.verify(sign(KEY, claims()))


def test_jwks_with_only_unusable_keys_accepts_nothing() -> None:
    with jwks_server([public(OTHER_KEY)]) as jwks:
        check = JwtVerifier(keys=JwksKeys(jwks.url), issuer=ISSUER)
        with pytest.raises(Unauthorized):
            check.verify(sign(KEY, claims()))


def demo_env(tmp_path: Path) -> dict[str, str]:
    return {"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "warehouse.duckdb")}


def test_dev_token_verifies_in_demo_mode_and_the_key_is_private(tmp_path: Path) -> None:
    settings = load_settings(demo_env(tmp_path), require=("jwt",))
    token = mint_dev_token(settings, "demo-patient-1", ttl_s=60)
    assert verifier_from_settings(settings).verify(token) == "demo-patient-1"
    mode = stat.S_IMODE(os.stat(settings.demo_jwt_key_path).st_mode)
    assert mode == 0o600
    assert b"PRIVATE KEY" in settings.demo_jwt_key_path.read_bytes()
    # The same key is reused, so tokens minted by one process verify in another.
    again = load_settings(demo_env(tmp_path), require=("jwt",))
    assert verifier_from_settings(again).verify(mint_dev_token(again, "p2")) == "p2"


def test_dev_token_expires(tmp_path: Path) -> None:
    settings = load_settings(demo_env(tmp_path), require=("jwt",))
    token = mint_dev_token(settings, "p", ttl_s=1)
    now = int(time.time())
    late = JwtVerifier(
        keys=verifier_from_settings(settings).keys, issuer=settings.clerk_issuer or "", now=lambda: now + 62
    )
    with pytest.raises(Unauthorized, match="expired"):
        late.verify(token)


def test_dev_token_refused_outside_demo_mode(tmp_path: Path) -> None:
    env = {
        "OURA_ASSETS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "CLERK_JWKS_URL": "https://clerk.example/jwks",
        "CLERK_ISSUER": ISSUER,
        "OURA_ASSETS_TOKEN_KEY": Fernet.generate_key().decode(),
    }
    with pytest.raises(ConfigError, match="demo mode"):
        mint_dev_token(load_settings(env), "patient-a")
    assert not (tmp_path / "demo-jwt-key.pem").exists()
