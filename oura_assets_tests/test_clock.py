"""The one UTC rule: a naive datetime means UTC (never the machine's local time); aware ones are converted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from oura_assets.clock import as_utc, utc_now


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 6, 10, 12, 0), datetime(2024, 6, 10, 12, 0, tzinfo=UTC)),
        (datetime(2024, 6, 10, 12, 0, tzinfo=UTC), datetime(2024, 6, 10, 12, 0, tzinfo=UTC)),
        (
            datetime(2024, 6, 10, 8, 0, tzinfo=timezone(timedelta(hours=-7))),
            datetime(2024, 6, 10, 15, 0, tzinfo=UTC),
        ),
        (
            datetime(2024, 6, 10, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            datetime(2024, 6, 9, 19, 0, tzinfo=UTC),
        ),
    ],
)
def test_as_utc(value: datetime, expected: datetime) -> None:
    result = as_utc(value)
    assert result == expected
    assert result.utcoffset() == timedelta(0)
    assert (result.year, result.month, result.day, result.hour, result.minute) == (
        expected.year,
        expected.month,
        expected.day,
        expected.hour,
        expected.minute,
    )


def test_utc_now_is_aware_utc() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(UTC)
