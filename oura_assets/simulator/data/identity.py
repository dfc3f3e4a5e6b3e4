"""What every document carries besides its figures: a stable id that encodes its day (so a single document
can be found again from its id alone) and, for some users, the unknown extra `meta {updated_at, version}`."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime

from oura_assets.simulator.data.seeds import stable_hash
from oura_assets.simulator.data.users import Document, UserProfile, local_iso

EPOCH_ORDINAL_MIN = date(1970, 1, 1).toordinal()
EPOCH_ORDINAL_MAX = date(2200, 1, 1).toordinal()


def document_id(user: UserProfile, collection: str, day: date, index: int) -> str:
    """A stable, opaque UUID for a document that still lets `find_document` regenerate its day."""
    raw = bytearray(
        hashlib.blake2b(f"{user.name}|{collection}|{day}|{index}".encode(), digest_size=16).digest()
    )
    raw[10:13] = (day.toordinal() ^ user.id_mask).to_bytes(3, "big")
    return str(uuid.UUID(bytes=bytes(raw), version=4))


def day_of_id(user: UserProfile, document_id_: str) -> date | None:
    try:
        raw = uuid.UUID(document_id_).bytes
    except ValueError:
        return None
    ordinal = int.from_bytes(raw[10:13], "big") ^ user.id_mask
    if not EPOCH_ORDINAL_MIN <= ordinal <= EPOCH_ORDINAL_MAX:
        return None
    return date.fromordinal(ordinal)


def _meta(
    user: UserProfile, doc_id: str, first_seen: datetime, revised_at: datetime | None
) -> Document | None:
    if user.meta_rate <= 0 or (stable_hash("meta", doc_id) % 1000) / 1000 >= user.meta_rate:
        return None
    updated = revised_at or first_seen
    return {"updated_at": local_iso(user.zone, updated), "version": 2 if revised_at else 1}


def with_meta(
    user: UserProfile, doc: Document, first_seen: datetime | None, revised_at: datetime | None
) -> Document:
    meta = _meta(user, doc["id"], first_seen or datetime.min.replace(tzinfo=UTC), revised_at)
    if meta is not None:
        doc["meta"] = meta
    return doc
