"""Screening one document before it lands: the normalizers' own checks, returned as a reason.

Upstream code keeps only documents that pass, so one malformed document never blocks a patient's other days.
"""

from __future__ import annotations

from oura_assets.domain import RAW_COLLECTIONS, SESSION, WORKOUT
from oura_assets.normalize.activities import session_row, workout_row
from oura_assets.normalize.documents import _Doc, activity_metrics, readiness_metrics
from oura_assets.normalize.errors import NormalizationError
from oura_assets.normalize.sleep import _period_rank, hrv_metrics, sleep_metrics
from oura_assets.normalize.wellness import FIGURES


def validate_document(collection: str, doc: object) -> str | None:
    """Why `doc` cannot be normalized as a `collection` document, or None when it can.

    The same checks the normalizers make (they raise `NormalizationError` instead), so a caller that lands
    only documents passing this never sees the normalizers fail. Heart-rate rows need a date-time with an
    offset (or `Z`) and a numeric `bpm`.
    """
    if collection not in RAW_COLLECTIONS:
        raise ValueError(
            f"unknown Oura collection {collection!r}; expected one of {', '.join(RAW_COLLECTIONS)}"
        )
    try:
        d = _Doc(collection, doc)
        if collection == "heartrate":
            if d.doc.get("timestamp") is None:
                return "missing 'timestamp'"
            d.timestamp("timestamp")
            if d.number("bpm") is None:
                return "missing 'bpm'"
            return None
        d.day()
        if collection == WORKOUT:
            workout_row("", d.doc)
        elif collection == SESSION:
            session_row("", d.doc)
        elif collection in FIGURES:
            FIGURES[collection](d.doc)
        elif collection != "sleep":
            d.timestamp("timestamp")
        if collection == "daily_readiness":
            readiness_metrics(d.doc)
        elif collection == "daily_activity":
            activity_metrics(d.doc)
        elif collection == "daily_sleep":
            sleep_metrics(d.doc, None)
        else:
            sleep_metrics(None, d.doc)
            hrv_metrics(d.doc)
            _period_rank(d)
    except NormalizationError as exc:
        return exc.reason
    return None
