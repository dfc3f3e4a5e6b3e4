"""Settings from the environment, read when a component starts (never at import time).

Outside demo mode every component names what it needs (`load_settings(require=...)`) and a missing variable
stops start-up with one clear line naming it. In demo mode (`OURA_ASSETS_DEMO=1`) the bundled simulator's URLs
and secrets generated into the data folder (mode 0600) fill whatever is unset, so `make demo` needs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet

from oura_assets.private_files import write_private

if TYPE_CHECKING:
    from oura_assets.warehouse.lake import LakeLocation

REAL_API_BASE_URL = "https://api.ouraring.com"
REAL_AUTHORIZE_URL = "https://cloud.ouraring.com/oauth/authorize"
REAL_TOKEN_URL = "https://api.ouraring.com/oauth/token"  # noqa: S105 (a URL, not a secret)
REAL_REVOKE_URL = "https://api.ouraring.com/oauth/revoke"

DEMO_CLIENT_ID = "oura-assets-demo"
DEMO_SIMULATOR_URL = "http://127.0.0.1:8787"
DEMO_API_URL = "http://127.0.0.1:8000"
DEMO_JWT_ISSUER = "oura-assets-demo"
CALLBACK_PATH = "/api/patient-graph/wearables/callback/oura"
RETENTION_VARIABLE = "OURA_ASSETS_RAW_HEARTRATE_RETENTION_DAYS"
RATE_BUDGET_VARIABLE = "OURA_ASSETS_RATE_BUDGET"
COORDINATION_VARIABLE = "OURA_ASSETS_COORDINATION"
WEBHOOK_PATH = "/api/patient-graph/wearables/webhooks/oura"
OAUTH_SCOPES = ("email", "personal", "daily", "heartrate", "workout", "session")
# The `wearable_sync_events` sensor's default interval (s): OURA_ASSETS_SYNC_EVENTS_INTERVAL_S.
SYNC_EVENTS_INTERVAL_S = 15

# What each component needs outside demo mode. A missing one is a start-up error naming the variable.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "oauth": ("OURA_CLIENT_ID", "OURA_CLIENT_SECRET", "OURA_REDIRECT_URI"),
    "tokens": ("OURA_ASSETS_TOKEN_KEY",),
    "jwt": ("CLERK_JWKS_URL", "CLERK_ISSUER"),
}


MIN_WAREHOUSE_KEY_LENGTH = 16


class ConfigError(RuntimeError):
    """A setting is missing or malformed. The message is one line that names the variable."""


@dataclass(frozen=True)
class Settings:
    demo: bool
    data_dir: Path
    warehouse_path: Path | LakeLocation
    """`OURA_ASSETS_WAREHOUSE`: the DuckDB file, or a DuckLake (with `OURA_ASSETS_LAKE_DATA_PATH`); either
    is what `warehouse.Warehouse` takes."""
    client_id: str | None
    client_secret: str | None = field(repr=False)
    redirect_uri: str | None
    api_base_url: str
    authorize_url: str
    token_url: str
    revoke_url: str
    token_keys: tuple[str, ...] = field(repr=False)
    clerk_jwks_url: str | None
    clerk_issuer: str | None
    clerk_audience: str | None
    start_date: date
    lookback_days: int
    simulator_url: str
    api_url: str
    analytics_path: Path
    """The read-only analytics snapshot (`OURA_ASSETS_ANALYTICS`), republished after each run."""
    # OURA_ASSETS_RAW_HEARTRATE_RETENTION_DAYS: raw heart-rate samples older than this many days are dropped
    # by the daily housekeeping job (the daily stats keep their figures); None keeps them all.
    raw_heartrate_retention_days: int | None = None
    # OURA_ASSETS_WAREHOUSE_KEY: the warehouse and the analytics snapshot are encrypted DuckDB files when set.
    warehouse_key: str | None = field(default=None, repr=False)
    webhook_verification_token: str | None = field(default=None, repr=False)
    """`OURA_WEBHOOK_VERIFICATION_TOKEN`: what Oura echoes when it verifies our webhook callback."""
    shards: int = 1
    """`OURA_ASSETS_SHARDS`: how many runs the nightly schedule splits the patients into (shards.py)."""
    sync_events_interval_s: int = SYNC_EVENTS_INTERVAL_S
    """`OURA_ASSETS_SYNC_EVENTS_INTERVAL_S`: seconds between the `wearable_sync_events` sensor's looks for
    finished runs (the daemon's sensor loop, every 5 s or so, is the floor whatever the setting)."""
    rate_budget: str | None = field(default=None, repr=False)
    """Where the shared Oura request budget lives: None is the host's SQLite file, a DSN a PostgreSQL database
    every host shares (oura/rate_budget_postgres.py). From `OURA_ASSETS_RATE_BUDGET`, else
    `OURA_ASSETS_COORDINATION` (`_coordination_and_budget`)."""
    coordination: str | None = field(default=None, repr=False)
    """Where per-patient token refresh locks and the token journal live: None is the host's files
    (`lock_dir`, `token_journal_dir`), a DSN a PostgreSQL database every host shares
    (coordination_postgres.py). From `OURA_ASSETS_COORDINATION`, else a postgres `OURA_ASSETS_RATE_BUDGET`."""
    webhook_callback_url: str = ""
    """`OURA_WEBHOOK_CALLBACK_URL`, default `OURA_ASSETS_API_URL` + the webhook route: the public URL of
    the receiver that subscriptions name (Oura must be able to reach it)."""

    @property
    def demo_jwt_key_path(self) -> Path:
        """Private RSA key (PEM, mode 0600) that signs development JWTs in demo mode."""
        return self.data_dir / "demo-jwt-key.pem"

    def oauth_client(self) -> tuple[str, str, str]:
        """(client id, client secret, redirect URI), or a ConfigError naming the first one missing."""
        for name, value in (
            ("OURA_CLIENT_ID", self.client_id),
            ("OURA_CLIENT_SECRET", self.client_secret),
            ("OURA_REDIRECT_URI", self.redirect_uri),
        ):
            if not value:
                raise ConfigError(
                    f"{name} is not set (needed for oauth); set it, or run with OURA_ASSETS_DEMO=1 "
                    "to use the bundled simulator"
                )
        assert self.client_id and self.client_secret and self.redirect_uri
        return self.client_id, self.client_secret, self.redirect_uri

    @property
    def lock_dir(self) -> Path:
        """Cross-process lock files (warehouse writer, per-patient token refresh)."""
        return self.data_dir / "locks"

    @property
    def token_journal_dir(self) -> Path:
        """Encrypted pairs Oura returned and the warehouse does not hold yet (0700; see token_journal.py)."""
        return self.lock_dir.parent / "token-journal"


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _demo_secrets(data_dir: Path) -> dict[str, str]:
    """The demo's generated client secret and Fernet key, created once and kept in data/ (mode 0600)."""
    path = data_dir / "demo-secrets.json"
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process created it first; read theirs
            write_private(
                path,
                json.dumps(
                    {
                        "client_secret": secrets.token_urlsafe(32),
                        "token_key": Fernet.generate_key().decode(),
                    }
                ),
                overwrite=False,
            )
    generated = json.loads(path.read_text())
    # Files generated before webhooks existed lack the token: derive it from the generated client secret
    # (one-way, so it reveals nothing of the secret) rather than rewrite a file others may be reading.
    generated.setdefault(
        "webhook_verification_token",
        hashlib.sha256(f"webhook-verification:{generated['client_secret']}".encode()).hexdigest()[:32],
    )
    return generated


def demo_warehouse_key_path(data_dir: Path) -> Path:
    """Where demo mode keeps its generated warehouse key (`oura-assets warehouse rekey` updates it).

    A file of its own, not a field of demo-secrets.json: a data folder made before encryption existed keeps
    its secrets file as it is, and an analyst finds the key by name.
    """
    return data_dir / "demo-warehouse-key"


def _demo_warehouse_key(data_dir: Path) -> str:
    """The demo's generated warehouse key, created once in data/ (mode 0600) beside the other demo secrets."""
    path = demo_warehouse_key_path(data_dir)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process created it first; read theirs
            write_private(path, secrets.token_urlsafe(32), overwrite=False)
    return path.read_text().strip()


def parse_warehouse_key(raw: str, name: str = "OURA_ASSETS_WAREHOUSE_KEY") -> str:
    """`raw` if it is a usable warehouse key, else a ConfigError naming `name` (never quoting the value)."""
    # DuckDB derives the AES key from any string; a short one would be guessable, so ask for a real one.
    if len(raw) < MIN_WAREHOUSE_KEY_LENGTH or any(c.isspace() for c in raw):
        raise ConfigError(
            f"{name} must be at least {MIN_WAREHOUSE_KEY_LENGTH} characters, no spaces; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return raw


def _parse_date(env: Mapping[str, str], name: str, default: str) -> date:
    raw = _env(env, name) or default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a date like 2024-06-10, got {raw!r}") from None


def _parse_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = _env(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _parse_postgres(raw: str | None, name: str, local: str, local_means: str) -> str | None:
    """A PostgreSQL connection string from `postgres:<libpq DSN>` or a URL, None for `local` or unset. Never
    quoted back in an error: a DSN may carry a password."""
    if raw is None or raw == local:
        return None
    if raw.startswith(("postgresql://", "postgres://")):
        return raw
    kind, _, dsn = raw.partition(":")
    if kind == "postgres" and dsn.strip():
        return dsn.strip()
    raise ConfigError(
        f"{name} must be `{local}` (the default: {local_means}) or "
        "`postgres:<libpq connection string or postgresql:// URL>`"
    )


def _coordination_and_budget(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(coordination DSN, rate budget DSN); None is the host's files.

    Processes on several hosts must share three things: Oura's request budget, each patient's refresh lock
    and the token journal. A deployment sets ONE variable for all three, `OURA_ASSETS_COORDINATION=postgres:
    <dsn>`; `OURA_ASSETS_RATE_BUDGET`, which came first, still decides the budget alone when it is set (the
    more specific setting wins). And when only `OURA_ASSETS_RATE_BUDGET=postgres:...` is set (a deployment
    from before coordination existed), the locks and the journal follow it into the same database: a shared
    budget exists because runs are on several hosts, and there per-host refresh locks let two hosts spend
    one patient's single-use refresh token twice. So the dangerous mix takes an explicit
    `OURA_ASSETS_COORDINATION=local`, never an upgrade.
    """
    coordination_raw = _env(env, COORDINATION_VARIABLE)
    budget_raw = _env(env, RATE_BUDGET_VARIABLE)
    coordination = _parse_postgres(
        coordination_raw, COORDINATION_VARIABLE, "local", "lock and journal files under the data folder"
    )
    budget = _parse_postgres(
        budget_raw, RATE_BUDGET_VARIABLE, "sqlite", "a file under the data folder's locks/"
    )
    return (
        coordination if coordination_raw is not None else budget,
        budget if budget_raw is not None else coordination,
    )


def _parse_token_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ConfigError(
                f"OURA_ASSETS_TOKEN_KEY key #{position} is not a Fernet key (32 url-safe base64 bytes); "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None
    return keys


def _warehouse_location(env: Mapping[str, str]) -> Path | LakeLocation:
    """`OURA_ASSETS_WAREHOUSE`: a DuckDB file (resolved), or a DuckLake with `OURA_ASSETS_LAKE_DATA_PATH`."""
    # Imported here: the warehouse package imports this module (ConfigError) when it loads.
    from oura_assets.warehouse.lake import DATA_PATH_VARIABLE, is_lake, lake_location

    value = _env(env, "OURA_ASSETS_WAREHOUSE") or "data/warehouse.duckdb"
    if is_lake(value):
        return lake_location(value, _env(env, DATA_PATH_VARIABLE))
    return Path(value).expanduser().resolve()


def load_settings(
    env: Mapping[str, str] | None = None,
    require: Iterable[str] = (),
) -> Settings:
    """Read settings from `env` (default: the process environment).

    `require` names components from REQUIREMENTS ("oauth", "tokens", "jwt") whose variables must be set
    outside demo mode.
    """
    env = os.environ if env is None else env
    demo = _env(env, "OURA_ASSETS_DEMO") in {"1", "true", "yes"}

    warehouse_path = _warehouse_location(env)
    default_data_dir = warehouse_path.parent if isinstance(warehouse_path, Path) else Path("data")
    data_dir = Path(_env(env, "OURA_ASSETS_DATA_DIR") or default_data_dir).resolve()

    if not demo:
        for component in require:
            for name in REQUIREMENTS[component]:
                if _env(env, name) is None:
                    raise ConfigError(
                        f"{name} is not set (needed for {component}); set it, or run with "
                        "OURA_ASSETS_DEMO=1 to use the bundled simulator"
                    )

    simulator_url = (_env(env, "OURA_ASSETS_SIMULATOR_URL") or DEMO_SIMULATOR_URL).rstrip("/")
    api_url = (_env(env, "OURA_ASSETS_API_URL") or DEMO_API_URL).rstrip("/")
    generated = _demo_secrets(data_dir) if demo else {}

    def pick(name: str, demo_value: str | None, real_value: str | None) -> str | None:
        return _env(env, name) or (demo_value if demo else real_value)

    token_key_raw = pick("OURA_ASSETS_TOKEN_KEY", generated.get("token_key"), None)
    warehouse_key_raw = _env(env, "OURA_ASSETS_WAREHOUSE_KEY") or (
        _demo_warehouse_key(data_dir) if demo else None
    )
    coordination, rate_budget = _coordination_and_budget(env)
    return Settings(
        demo=demo,
        data_dir=data_dir,
        warehouse_path=warehouse_path,
        client_id=pick("OURA_CLIENT_ID", DEMO_CLIENT_ID, None),
        client_secret=pick("OURA_CLIENT_SECRET", generated.get("client_secret"), None),
        redirect_uri=pick("OURA_REDIRECT_URI", api_url + CALLBACK_PATH, None),
        api_base_url=pick("OURA_API_BASE_URL", simulator_url, REAL_API_BASE_URL).rstrip("/"),
        authorize_url=pick("OURA_AUTHORIZE_URL", simulator_url + "/oauth/authorize", REAL_AUTHORIZE_URL),
        token_url=pick("OURA_TOKEN_URL", simulator_url + "/oauth/token", REAL_TOKEN_URL),
        revoke_url=pick("OURA_REVOKE_URL", simulator_url + "/oauth/revoke", REAL_REVOKE_URL),
        token_keys=_parse_token_keys(token_key_raw) if token_key_raw else (),
        clerk_jwks_url=_env(env, "CLERK_JWKS_URL"),
        clerk_issuer=pick("CLERK_ISSUER", DEMO_JWT_ISSUER, None),
        clerk_audience=_env(env, "CLERK_AUDIENCE"),
        start_date=_parse_date(env, "OURA_ASSETS_START_DATE", "2020-01-01"),
        lookback_days=_parse_int(env, "OURA_ASSETS_LOOKBACK_DAYS", 3, 0, 60),
        simulator_url=simulator_url,
        api_url=api_url,
        # Beside the warehouse's data folder by default (`data/analytics.duckdb`), so a warehouse moved
        # elsewhere takes its snapshot along rather than sharing one with another warehouse.
        analytics_path=Path(_env(env, "OURA_ASSETS_ANALYTICS") or data_dir / "analytics.duckdb")
        .expanduser()
        .resolve(),
        raw_heartrate_retention_days=(
            _parse_int(env, RETENTION_VARIABLE, 0, 1, 36_500) if _env(env, RETENTION_VARIABLE) else None
        ),
        warehouse_key=parse_warehouse_key(warehouse_key_raw) if warehouse_key_raw else None,
        webhook_verification_token=pick(
            "OURA_WEBHOOK_VERIFICATION_TOKEN", generated.get("webhook_verification_token"), None
        ),
        webhook_callback_url=_env(env, "OURA_WEBHOOK_CALLBACK_URL") or api_url + WEBHOOK_PATH,
        shards=_parse_int(env, "OURA_ASSETS_SHARDS", 1, 1, 64),
        sync_events_interval_s=_parse_int(
            env, "OURA_ASSETS_SYNC_EVENTS_INTERVAL_S", SYNC_EVENTS_INTERVAL_S, 1, 3600
        ),
        rate_budget=rate_budget,
        coordination=coordination,
    )
