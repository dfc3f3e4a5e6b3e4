"""The OAuth `state`: what ties Oura's redirect back to the patient who started the connection.

It is the callback's only credential, so it is unguessable (256 random bits), lives 10 minutes, is spent on
first use, and only its SHA-256 is stored: a copy of the warehouse does not hand out usable states.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

STATE_TTL = timedelta(minutes=10)
STATE_BYTES = 32
# token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; anything else was not issued by us.
_STATE_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def well_formed(state: str | None) -> bool:
    """Cheap shape check before touching the warehouse (a forged state still goes through the lookup)."""
    return bool(state) and _STATE_SHAPE.fullmatch(state or "") is not None
