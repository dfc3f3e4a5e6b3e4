"""Shards: the patient set split into N parts that sync in parallel, as separate run processes.

Past a few thousand patients one run's process is the bottleneck of the night (token refreshes, parsing, its
writes), not Oura, whose per-application limit is shared anyway (`oura/rate_budget.py` keeps one budget for
every process and host). So the nightly schedule, and a backfill, can start N runs, each tagged with its
shard `i/N` (1-based: `1/3`, `2/3`, `3/3`), and each run syncs only the patients of its shard.

The assignment is a stable hash: patient p is in shard `sha256(p) mod N + 1`. It depends on nothing but the
patient's id and N, so every process and host agrees without asking anyone (not Python's `hash()`, which is
salted per interpreter), a patient is in exactly one shard of N, and it stays there when other patients
connect or leave: N runs over the same connections sync each patient once and skip none. Changing N moves
patients between shards, which is harmless: the N runs of one night all use the same N.

Pure: no I/O, no Dagster. The run tag's name lives with the other tags (`defs/partitions.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SHARDS = 64
"""More shards than this would not make a night faster: they all draw from one Oura budget."""


def shard_number(patient_id: str, count: int) -> int:
    """The shard (1..count) that `patient_id` belongs to when the patients are split `count` ways."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"a shard count is between 1 and {MAX_SHARDS}, got {count}")
    digest = hashlib.sha256(patient_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True)
class Shard:
    """Shard `number` of `count` (1-based), written `number/count`."""

    number: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 1 <= self.number <= self.count:
            raise ValueError(
                f"a shard is i/N with 1 <= i <= N <= {MAX_SHARDS}, got {self.number}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"2/3"` -> Shard(2, 3); anything else is a ValueError that quotes it and says the form."""
        number, slash, count = text.strip().partition("/")
        try:
            if not slash:
                raise ValueError
            return cls(int(number), int(count))
        except ValueError:
            raise ValueError(
                f"shard must be i/N with 1 <= i <= N <= {MAX_SHARDS} (e.g. 2/3), got {text!r}"
            ) from None

    @classmethod
    def all(cls, count: int) -> list[Shard]:
        """The `count` shards that together hold every patient once."""
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"a shard count is between 1 and {MAX_SHARDS}, got {count}")
        return [cls(number, count) for number in range(1, count + 1)]

    def holds(self, patient_id: str) -> bool:
        return shard_number(patient_id, self.count) == self.number

    def select(self, patients: Iterable[str]) -> list[str]:
        """The patients of this shard, in the order given."""
        return [p for p in patients if self.holds(p)]

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def select(patients: Iterable[str], shard: Shard | None) -> list[str]:
    """The patients of `shard`, or all of them when the run is not sharded."""
    return list(patients) if shard is None else shard.select(patients)
