"""Settings: one clear line naming a missing variable; demo mode fills the rest from generated secrets."""

from __future__ import annotations

import stat
from datetime import date

import pytest
from cryptography.fernet import Fernet

from oura_assets.config import REAL_API_BASE_URL, ConfigError, load_settings

KEY = Fernet.generate_key().decode()
REAL = {
    "OURA_CLIENT_ID": "id",
    "OURA_CLIENT_SECRET": "secret",
    "OURA_REDIRECT_URI": "https://example.com/cb",
    "OURA_ASSETS_TOKEN_KEY": KEY,
    "CLERK_JWKS_URL": "https://clerk.example.com/.well-known/jwks.json",
    "CLERK_ISSUER": "https://clerk.example.com",
}


@pytest.mark.parametrize("missing", sorted(REAL))
def test_a_missing_required_variable_is_named_in_one_line(tmp_path, missing):
    env = {k: v for k, v in REAL.items() if k != missing}
    env["OURA_ASSETS_WAREHOUSE"] = str(tmp_path / "w.duckdb")
    with pytest.raises(ConfigError) as raised:
        load_settings(env, require=("oauth", "tokens", "jwt"))
    assert missing in str(raised.value) and "\n" not in str(raised.value)


def test_real_settings_default_to_the_real_oura_hosts(tmp_path):
    settings = load_settings(
        {**REAL, "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}, require=("oauth",)
    )
    assert settings.api_base_url == REAL_API_BASE_URL and not settings.demo
    assert settings.token_url == "https://api.ouraring.com/oauth/token"
    assert not (tmp_path / "demo-secrets.json").exists()


def test_demo_mode_fills_everything_and_keeps_generated_secrets_private(tmp_path):
    env = {"OURA_ASSETS_DEMO": "1", "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}
    first = load_settings(env, require=("oauth", "tokens", "jwt"))
    again = load_settings(env)
    assert first.api_base_url == "http://127.0.0.1:8787" and first.client_id == "oura-assets-demo"
    assert first.client_secret == again.client_secret and first.token_keys == again.token_keys
    assert stat.S_IMODE((tmp_path / "demo-secrets.json").stat().st_mode) == 0o600
    assert first.client_secret not in repr(first)


def test_an_explicit_variable_wins_over_demo_defaults(tmp_path):
    env = {
        "OURA_ASSETS_DEMO": "1",
        "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"),
        "OURA_CLIENT_ID": "mine",
    }
    assert load_settings(env).client_id == "mine"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("OURA_ASSETS_TOKEN_KEY", "not-a-key", "not a Fernet key"),
        ("OURA_ASSETS_TOKEN_KEY", f"{KEY},short", "key #2"),
        ("OURA_ASSETS_START_DATE", "June 2024", "must be a date"),
        ("OURA_ASSETS_LOOKBACK_DAYS", "-1", "between 0 and 60"),
        ("OURA_ASSETS_LOOKBACK_DAYS", "three", "whole number"),
        ("OURA_ASSETS_SYNC_EVENTS_INTERVAL_S", "0", "between 1 and 3600"),
        ("OURA_ASSETS_SYNC_EVENTS_INTERVAL_S", "often", "whole number"),
    ],
    ids=[
        "bad-key",
        "bad-second-key",
        "bad-date",
        "negative-lookback",
        "word-lookback",
        "zero-interval",
        "word-interval",
    ],
)
def test_malformed_values_get_a_clear_error(tmp_path, name, value, fragment):
    env = {**REAL, "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"), name: value}
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env)


def test_the_sync_events_sensor_interval_defaults_to_15_s_and_follows_the_variable(tmp_path):
    from oura_assets.defs.sensors import build_event_sensor

    env = {**REAL, "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")}
    assert load_settings(env).sync_events_interval_s == 15
    settings = load_settings({**env, "OURA_ASSETS_SYNC_EVENTS_INTERVAL_S": "2"})
    assert settings.sync_events_interval_s == 2
    assert build_event_sensor(settings.sync_events_interval_s).minimum_interval_seconds == 2


def test_key_rotation_keeps_every_key_newest_first(tmp_path):
    newer = Fernet.generate_key().decode()
    env = {
        **REAL,
        "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb"),
        "OURA_ASSETS_TOKEN_KEY": f"{newer}, {KEY}",
    }
    settings = load_settings(env)
    assert settings.token_keys == (newer, KEY)
    assert settings.start_date == date(2020, 1, 1) and settings.lookback_days == 3


DSN = "host=db.internal dbname=oura user=oura password=not-for-errors"
OTHER = "host=budget.internal dbname=budget user=oura"


@pytest.mark.parametrize(
    "env,coordination,budget",
    [
        ({}, None, None),  # one host: files and SQLite
        ({"OURA_ASSETS_COORDINATION": f"postgres:{DSN}"}, DSN, DSN),  # the one setting carries all three
        ({"OURA_ASSETS_RATE_BUDGET": f"postgres:{DSN}"}, DSN, DSN),  # an older deployment: locks follow it
        (
            {"OURA_ASSETS_COORDINATION": "postgresql://oura@db/oura"},
            "postgresql://oura@db/oura",
            "postgresql://oura@db/oura",
        ),
        # The more specific variable decides the budget; an explicit `local` keeps locks on the host.
        (
            {"OURA_ASSETS_COORDINATION": f"postgres:{DSN}", "OURA_ASSETS_RATE_BUDGET": f"postgres:{OTHER}"},
            DSN,
            OTHER,
        ),
        ({"OURA_ASSETS_COORDINATION": f"postgres:{DSN}", "OURA_ASSETS_RATE_BUDGET": "sqlite"}, DSN, None),
        ({"OURA_ASSETS_COORDINATION": "local", "OURA_ASSETS_RATE_BUDGET": f"postgres:{DSN}"}, None, DSN),
    ],
)
def test_coordination_and_rate_budget_precedence(tmp_path, env, coordination, budget):
    settings = load_settings({**REAL, **env, "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")})
    assert (settings.coordination, settings.rate_budget) == (coordination, budget)
    assert "not-for-errors" not in repr(settings)


def test_a_malformed_coordination_names_the_variable_never_the_value(tmp_path):
    env = {**REAL, "OURA_ASSETS_COORDINATION": "mysql:password=not-for-errors"}
    with pytest.raises(ConfigError) as raised:
        load_settings({**env, "OURA_ASSETS_WAREHOUSE": str(tmp_path / "w.duckdb")})
    assert "OURA_ASSETS_COORDINATION" in str(raised.value) and "not-for-errors" not in str(raised.value)
