"""What a simulator instance is configured with: its OAuth clients, token lifetime, limits, page sizes.

Kept apart from the app so the demo, the CLI and tests can build a configuration (usually from `Settings`)
without importing Starlette or uvicorn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from oura_assets.config import Settings
from oura_assets.simulator.readings import Readings

# Small on purpose: a month of any collection, or one day of heart rate, takes several pages, so a client
# that stops at the first page is caught by the simulator. Real Oura pages are larger.
DEFAULT_PAGE_SIZES: dict[str, int] = {
    "daily_readiness": 10,
    "daily_sleep": 10,
    "sleep": 10,
    "daily_activity": 10,
    "workout": 10,
    "session": 10,
    "heartrate": 200,
    "default": 10,
}


@dataclass(frozen=True)
class ClientRegistration:
    """An OAuth application registered at the simulated Oura: its secret and its exact redirect URIs."""

    secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` requests per `window_s` seconds (fixed windows aligned to the epoch)."""

    limit: int
    window_s: float

    @classmethod
    def coerce(cls, value: RateLimit | Mapping[str, Any] | tuple[int, float]) -> RateLimit:
        if isinstance(value, RateLimit):
            return value
        if isinstance(value, Mapping):
            return cls(int(value["limit"]), float(value["window_s"]))
        limit, window_s = value
        return cls(int(limit), float(window_s))

    def __post_init__(self) -> None:
        if self.limit < 0 or self.window_s <= 0:
            raise ValueError(f"a rate limit needs limit >= 0 and window_s > 0, got {self}")


# How often a CLI-started simulator (`make dev`, `oura-assets simulator`) looks for changes in its data and
# sends their webhook events: Oura sends them about 30 s after the phone syncs (OURA-NOTES.md).
WEBHOOK_WATCH_S = 30.0


@dataclass
class SimulatorConfig:
    """Everything a simulator instance needs.

    `page_size` maps a route (`daily_readiness`, ..., `heartrate`, or `default` for the rest) to its
    page size; a partial mapping or a single int is merged over `DEFAULT_PAGE_SIZES`. `now` starts the data
    clock at that instant (it then advances with real time); `None` follows the wall clock. `seed` seeds the
    fault dice (the data itself depends only on user names and days). `state_path`, when set, is the file the
    OAuth grants are kept in (as digests, never the tokens themselves) so a restarted simulator still honours
    the tokens it issued; `None` keeps them in memory only, as tests want. `readings` picks how the routes
    read Oura's ambiguities (`readings.Readings`, or a partial mapping of it); `/_sim/faults` can change them.
    """

    clients: dict[str, ClientRegistration] = field(default_factory=dict)
    access_token_ttl_s: int = 86400
    app_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(5000, 300.0))
    token_rate_limit: RateLimit | None = None
    page_size: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PAGE_SIZES))
    seed: int = 0
    code_ttl_s: int = 600
    now: datetime | None = None
    state_path: Path | None = None
    readings: Readings = field(default_factory=Readings)
    webhook_watch_s: float | None = None
    """When set, every that many seconds the simulator sends the signed create/update/delete events of what
    changed in its data since the last look (a night synced, a document revised, a period gone) to the
    subscriptions, as Oura does about 30 s after a phone syncs; None (tests) sends events only on request."""

    def __post_init__(self) -> None:
        self.readings = Readings.coerce(self.readings)
        self.app_rate_limit = RateLimit.coerce(self.app_rate_limit)
        if self.token_rate_limit is not None:
            self.token_rate_limit = RateLimit.coerce(self.token_rate_limit)
        sizes = dict(DEFAULT_PAGE_SIZES)
        if isinstance(self.page_size, int):
            sizes = dict.fromkeys(sizes, self.page_size)
        else:
            sizes.update(self.page_size)
        if any(size < 1 for size in sizes.values()):
            raise ValueError(f"page sizes must be positive, got {sizes}")
        self.page_size = sizes
        if self.now is not None and self.now.tzinfo is None:
            raise ValueError("SimulatorConfig.now must be timezone-aware")

    def page_size_for(self, route: str) -> int:
        return self.page_size.get(route, self.page_size["default"])

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SimulatorConfig:
        """The simulator the project's own settings talk to: their client id, secret and redirect URI.

        In demo mode its grants persist in `<data_dir>/simulator-state.json`, shared by every way of starting
        it (`make demo`'s in-process one, `make simulator`, `make dev`), so tokens the demo stored stay valid
        when another of them takes over. `overrides` win, including `state_path=None`.
        """
        client_id, client_secret, redirect_uri = settings.oauth_client()
        clients = {client_id: ClientRegistration(client_secret, (redirect_uri,))}
        if settings.demo:
            overrides = {"state_path": settings.data_dir / "simulator-state.json", **overrides}
        return cls(clients=clients, **overrides)
