"""The bundled Oura simulator: Oura's OAuth server and `/v2/usercollection` API on loopback, with fault knobs.

There is no internet where this project is built and tested, and Oura offers no sandbox for OAuth, so the
demo, `make dev` and the integration tests talk to this instead. It aims to be faithful to Oura (and strict
where Oura is ambiguous), not to this project's client: see `api.py` for the parameter semantics, `data/`
for the simulated users and how their documents sync late and get revised, `oauth.py` for the grant rules.
"""

from oura_assets.simulator.app import create_app
from oura_assets.simulator.config import DEFAULT_PAGE_SIZES, ClientRegistration, RateLimit, SimulatorConfig
from oura_assets.simulator.control import SimulatorControl
from oura_assets.simulator.grant_store import KNOWN_SCOPES
from oura_assets.simulator.server import SimulatorServer, run

__all__ = [
    "DEFAULT_PAGE_SIZES",
    "KNOWN_SCOPES",
    "ClientRegistration",
    "RateLimit",
    "SimulatorConfig",
    "SimulatorControl",
    "SimulatorServer",
    "create_app",
    "run",
]
