"""Oura's date-times read strictly and written in one shape (UTC `YYYY-MM-DDTHH:MM:SSZ`).

Every instant the normalizers take must carry an offset; without one it cannot be placed. Kept apart so the
rule for a single string (`to_utc_z`) and for a column of heart-rate timestamps stay side by side.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from oura_assets.normalize.errors import NormalizationError


def _parse_aware(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__} {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        # Oura's LocalizedDateTime always carries an offset; without one the instant is unknowable.
        raise ValueError(f"date-time without a UTC offset: {value!r}")
    return parsed


def to_utc_z(ts: str | None) -> str | None:
    """An ISO-8601 date-time with any offset (`+05:30`, `-07:00`, `Z`, `.000Z`, `+0530`), with a `T` or a
    space between date and time, as UTC `YYYY-MM-DDTHH:MM:SSZ` (Python 3.11's `fromisoformat` reads them all).

    Sub-seconds are truncated (not rounded), so every value has the same shape and sorts as text.
    Raises `NormalizationError` on text that is not a date-time with an offset.
    """
    if ts is None:
        return None
    try:
        parsed = _parse_aware(ts)
    except ValueError as exc:
        raise NormalizationError(str(exc)) from None
    return _utc_z(parsed)


def _utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_timestamps(column: pl.Series) -> pl.Series:
    if column.dtype == pl.Null:
        return column.cast(pl.Datetime("us", "UTC"))
    if isinstance(column.dtype, pl.Datetime):
        if column.dtype.time_zone is None:
            return column.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if column.dtype != pl.String:
        raise NormalizationError(
            f"'timestamp' should be an ISO-8601 string, got {column.dtype}", collection="heartrate"
        )
    # Oura sends `+00:00` or `.000Z` (OURA-NOTES.md, heartrate rows); chrono's %:z does not take `Z`. Its
    # framework (FastAPI on pydantic) also reads a space (or `t`, `_`) separator and `±HHMM` offsets, so a
    # client must too: both are rewritten to the one shape the format below takes.
    text = (
        column.str.replace(r"[Zz]$", "+00:00")
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT_]", "${1}T")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
    )
    parsed = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_zone="UTC", time_unit="us", strict=False)
    failed = parsed.is_null() & text.is_not_null()
    if failed.any():
        bad = text.filter(failed).head(1).to_list()[0]
        raise NormalizationError(
            f"'timestamp' is not an ISO-8601 date-time with an offset: {bad!r}", collection="heartrate"
        )
    return parsed
