"""The simulated world's only source of variety: stable hashes of names, days and indexes.

Every value is drawn from a `random.Random` seeded by such a hash, never from shared state, so two simulator
instances (or a restart) agree on every id and value and any day can be built in any order.
"""

from __future__ import annotations

import hashlib
import random


def stable_hash(*parts: object) -> int:
    joined = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(joined, digest_size=8).digest(), "big")


def seeded_rng(*parts: object) -> random.Random:
    return random.Random(stable_hash(*parts))


def clamp(value: float, low: int = 1, high: int = 100) -> int:
    return max(low, min(high, round(value)))
