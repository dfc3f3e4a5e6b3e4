"""The connection API (CONTRACT §3): patients connect their Oura ring, ask for syncs and follow them.

`app` is the ASGI object servers load (`uvicorn oura_assets.api:app`); it reads its settings when it starts,
not at import. `create_app` builds one with injected parts for tests and embedding.
"""

from oura_assets.api.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
