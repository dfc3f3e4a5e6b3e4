"""Writing a patient's day statuses: gather what the warehouse knows of each day, derive, store.

The rebuild calls it in the transaction that rebuilds the patient's normalized rows, and the sync in the
transaction that records a patient whose sync failed outright (the normalized assets may never run then).
Both read the same evidence here, so a day's status does not depend on which of them wrote it last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb

from oura_assets import day_status, normalize
from oura_assets import warehouse as wh

# Local days need the patient's offset; a day without its own daily document borrows the nearest known one.
_OFFSET_MARGIN = timedelta(days=31)


def _hr_samples(
    conn: duckdb.DuckDBPyConnection,
    patient_id: str,
    days: list[date],
    nearby: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[date, int]:
    offsets = normalize.day_offsets(
        nearby.get("daily_readiness", []), nearby.get("daily_sleep", []), nearby.get("daily_activity", [])
    )
    # The UTC span that covers local days [first, last] for any offset: what the sync fetches for them.
    low = datetime.combine(days[0] - timedelta(days=1), time(), tzinfo=UTC)
    high = datetime.combine(days[-1] + timedelta(days=2), time(), tzinfo=UTC)
    samples = wh.read_raw_heartrate(conn, patient_id, low, high)
    return {day: s.hr_samples for day, s in normalize.heart_rate_day_stats(samples, offsets, days).items()}


def _read_documents(
    conn: duckdb.DuckDBPyConnection, patient_id: str, start: date, end: date
) -> dict[str, list[dict[str, Any]]]:
    documents: dict[str, list[dict[str, Any]]] = {}
    for collection in wh.DOCUMENT_COLLECTIONS:
        found = wh.read_raw_documents(
            conn, collection, patient_id, start - _OFFSET_MARGIN, end + _OFFSET_MARGIN
        )
        documents[collection] = [d for d in found if normalize.validate_document(collection, d) is None]
    return documents


def write_day_status(
    conn: duckdb.DuckDBPyConnection,
    *,
    patient_id: str,
    start: date,
    end: date,
    run_id: str | None,
    now: datetime | None = None,
    nearby: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> int:
    """Derive and store the patient's day statuses for days [start, end]; returns the rows written.

    `nearby` are the patient's screened documents around the window (the rebuild has read them already);
    without them they are read here. The run's errors for the patient come from its sync result, the
    connection's state from `wearable_connections`.
    """
    now = now or datetime.now(UTC)
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    nearby = nearby if nearby is not None else _read_documents(conn, patient_id, start, end)
    low, high = start.isoformat(), end.isoformat()
    in_window = {c: [d for d in docs if low <= str(d.get("day"))[:10] <= high] for c, docs in nearby.items()}
    evidence = day_status.evidence(days, in_window, _hr_samples(conn, patient_id, days, nearby))
    errors = [
        day_status.FetchError(str(e.get("code")), e.get("collection"), str(e.get("message") or ""))
        for r in (wh.sync_results_for_run(conn, run_id) if run_id else [])
        if r.patient_id == patient_id
        for e in r.errors
    ]
    connection = wh.get_connection(conn, patient_id)
    last_synced = connection.last_synced_at if connection else None
    statuses = day_status.day_statuses(
        evidence,
        today=now.astimezone(UTC).date(),
        errors=errors,
        connection_status=connection.status if connection else None,
        last_synced=last_synced.astimezone(UTC).date() if last_synced else None,
    )
    return wh.replace_day_status(conn, patient_id, start, end, statuses, now)
